"""The RL prompt of a row: the one prompt builder of every in-process `model.generate` path.

verl's agent loop renders a row's prompt in three steps: `QISafeDataset` builds the messages (the
question inside `verl_format`'s template, the image resized by qwen-vl-utils within
`data.image_{min,max}_pixels`), verl's `apply_chat_template` helper adds the generation prompt, and
`build_multimodal_processor_inputs` makes the processor call. The warm start, QI curation's sampler,
SRPO's pair mining and `saferl.generate` all generate in-process. Each used to build its own prompt,
so QI curation measured a candidate's instability on a prompt without the format instruction that RL
trains with. They all render here now, through the dataset class and verl's helpers, so a prompt is
token-identical to the one RL sees.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf
from verl.utils.tokenizer import build_multimodal_processor_inputs
from verl.utils.tokenizer.chat_template import apply_chat_template

from .dataset import QISafeDataset
from .verl_format import convert_file, convert_rows

# What the dataset class needs on CPU: in-process length filtering (a forked pool after torch started its
# threads can deadlock). Everything else is the RL run's own `data` config.
DEFAULT_DATA_CONFIG: dict[str, Any] = {"max_prompt_length": 1024, "filter_overlong_prompts_workers": None}
# The keys of the RL run's `data` config that change what a row becomes (its prompt, its image, whether
# it is kept): a cache of anything built from prompts (the warm start, SRPO's pairs) fingerprints these
# only, so RL-side settings (batch sizes, val files) leave it valid.
DATA_KEYS_FINGERPRINTED = (
    "prompt_key",
    "image_key",
    "image_patch_size",
    "image_min_pixels",
    "image_max_pixels",
    "max_prompt_length",
    "filter_overlong_prompts",
    "truncation",
    "apply_chat_template_kwargs",
    "mm_processor_kwargs",
)
DataFiles = str | os.PathLike | Sequence[str | os.PathLike]


def plain(node: Any) -> dict[str, Any]:
    """A config node (or None) as a plain dict, for keyword arguments."""
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def dataset_config(data_config: DictConfig | dict | None = None) -> DictConfig:
    """The `QISafeDataset` config: the RL run's `data` node over the CPU-safe defaults.

    The node is resolved first: it usually interpolates other parts of the training config
    (`max_response_length: ${actor_rollout_ref...}`), which a detached copy could not resolve.
    """
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULT_DATA_CONFIG), plain(data_config))
    cfg.filter_overlong_prompts_workers = None  # mandatory in-process filtering (see DEFAULT_DATA_CONFIG)
    return cfg


def as_paths(files: DataFiles) -> list[Path]:
    """One file or several (verl's `data.train_files` may be a list), as paths."""
    if isinstance(files, str | os.PathLike):
        return [Path(files)]
    return [Path(f) for f in files]


def as_verl_file(path: Path, scratch: Path) -> Path:
    """A verl-format parquet for `path`: itself, or a QI-Safe-10K file converted like the RL data is."""
    names = set(pq.read_schema(path).names)
    if "prompt" in names and "extra_info" in names:
        return path
    if {"question", "image", "safety_label"} <= names:
        out = scratch / f"{path.stem}.verl.parquet"
        convert_file(path, out)
        return out
    raise ValueError(f"{path}: neither a verl-format file (prompt, extra_info) nor a QI-Safe-10K file")


@dataclass
class Prompt:
    """One row's RL prompt, as the agent loop would render it."""

    text: str  # the chat-templated prompt, vision placeholders included: what the processor is called on
    ids: list[int]  # its token ids, image tokens expanded
    images: list[Any]  # PIL images, already resized by the dataset's qwen-vl-utils path
    messages: list[dict[str, Any]]  # the dataset's messages, for a caller that continues the dialogue
    row: dict[str, Any] = field(repr=False)  # the dataset row (label, category, objects, extra_info)


class PromptBuilder:
    """Renders rows (files, or QI-Safe-10K rows in memory) and dialogues the way the RL engine does."""

    def __init__(self, processor: Any, data_config: DictConfig | dict | None = None) -> None:
        self.processor = processor
        self.cfg = dataset_config(data_config)
        self.template_kwargs = plain(self.cfg.get("apply_chat_template_kwargs"))

    def inputs(self, text: str | list[str], images: list[Any]) -> Any:
        """The processor's tensors for prompt text(s), through verl's own helper (the rollout's kwargs)."""
        mm_kwargs = plain(self.cfg.get("mm_processor_kwargs"))
        return build_multimodal_processor_inputs(
            self.processor,
            text=[text] if isinstance(text, str) else text,
            images=images or None,
            mm_processor_kwargs=mm_kwargs or None,
        )

    def render(self, turns: list[Any], images: list[Any]) -> tuple[str, list[int]]:
        """The chat-templated prompt of `turns`, with the generation prompt, and its token ids."""
        text = apply_chat_template(
            self.processor, turns, tokenize=False, add_generation_prompt=True, **self.template_kwargs
        )
        return text, self.inputs(text, images)["input_ids"][0].tolist()

    def from_files(self, files: DataFiles) -> Iterator[Prompt]:
        """Every row of `files` (verl format, or QI-Safe-10K parquet converted as `to-verl` does)."""
        with tempfile.TemporaryDirectory(prefix="saferl-prompts-") as scratch:
            sources = [str(as_verl_file(f, Path(scratch))) for f in as_paths(files)]
            cfg = self.cfg.copy()
            if cfg.get("cache_dir") is None:
                cfg.cache_dir = scratch  # only used for remote files; keep it away from ~/.cache
            dataset = QISafeDataset(sources, self.processor.tokenizer, cfg, processor=self.processor)
            for index in range(len(dataset)):
                row = dataset[index]
                messages = row["raw_prompt"]
                images, _, _ = dataset._process_multi_modal_info(messages, dataset.image_patch_size, cfg)
                images = list(images or [])
                text, ids = self.render(messages, images)
                yield Prompt(text, ids, images, messages, row)

    def from_rows(self, rows: Iterable[dict[str, Any]]) -> list[Prompt]:
        """QI-Safe-10K rows held in memory (curation's candidates), rendered as if read from a file.

        They go through `verl_format` and a scratch parquet so that nothing here re-implements a step
        of the dataset's: the file is what `to-verl` would have written for them.
        """
        with tempfile.TemporaryDirectory(prefix="saferl-prompts-") as scratch:
            path = Path(scratch) / "rows.parquet"
            pq.write_table(pa.Table.from_pylist(convert_rows(rows)), path)
            return list(self.from_files(path))
