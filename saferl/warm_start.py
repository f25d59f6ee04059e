"""PST's policy-guided SFT warm start: a short supervised stage on the policy-citing reference answers.

GRPO can only reinforce what the policy already samples. A randomly initialised (tiny) policy never
writes `<think>…</think>` followed by an answer, so nearly every reward in its first groups is the same
and there is little advantage to learn from. PST (policy-guided safety tuning) therefore starts RL from a policy
fine-tuned on answers that reason about the request and cite the safety policy: here, the data's
`reference` column (a refusal with an alternative for unsafe rows, a helpful answer for safe ones).
The stage is kept short on purpose: it must teach the *format*, not solve the task, so the policy still
answers harmful prompts often enough for RL to have failures to correct.

Two things make the warm-started policy useful for RL rather than merely trained:

- the SFT prompt is token-identical to the RL prompt: rows go through `QISafeDataset` (the RL engine's
  dataset class, same image resizing) and the processor's chat template with the image, exactly as
  verl's agent loop renders them, so the policy sees at RL time exactly what it saw in SFT;
- the loss is on the assistant tokens only (the reference and the end-of-turn token), so the policy
  learns to answer and to stop, and learns nothing about predicting prompts.

    python -m saferl.warm_start --model DIR --train FILE --out DIR [key=value ...]
    python -m saferl.warm_start --measure [--steps 0,50,100,200,300,400] [key=value ...]

The output directory is a complete checkpoint (`load_vlm(out)` and `from_pretrained(out)` work as for the
base model) plus `saferl_warm_start.json`, the marker that holds the inputs' fingerprint and the loss
curve. A second call with the same inputs returns at once; a killed run never leaves a directory that
is taken for done (everything is written to a temp dir and renamed into place, marker last).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from saferl.resources import SAMPLE_DIR, conf_file

logger = logging.getLogger(__name__)

DEFAULT_WARM_START_CONFIG = conf_file("saferl", "warm_start", "default.yaml")
MARKER = "saferl_warm_start.json"
# Bump when the same inputs would produce a different checkpoint: it invalidates every cached warm start.
WARM_START_VERSION = "1"
IGNORE_INDEX = -100
# Gradient-norm clip: the first steps from random init have large gradients; clipping keeps a high constant
# learning rate stable without a warmup (which would tie the weights at step N to the total step count).
MAX_GRAD_NORM = 1.0
# What the dataset class needs on CPU: in-process length filtering (a forked pool after torch started its
# threads can deadlock). Everything else is the RL run's own `data` config.
DEFAULT_DATA_CONFIG: dict[str, Any] = {"max_prompt_length": 1024, "filter_overlong_prompts_workers": None}
# The keys of the RL run's `data` config that change what a row becomes (its prompt, its image, whether
# it is kept): the fingerprint holds these only, so RL-side settings (batch sizes, val files) leave the
# cached warm start valid.
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
_STAGING = re.compile(r"\.warm-(\d+)\.")
TrainFiles = str | os.PathLike | Sequence[str | os.PathLike]


def load_warm_start_config(
    overrides: list[str] | None = None, path: str | Path = DEFAULT_WARM_START_CONFIG
) -> DictConfig:
    """The `saferl.warm_start` config node (conf/saferl/warm_start/default.yaml) with dotlist overrides."""
    return OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(overrides or []))


# ---------------------------------------------------------------------------------------------------
# Examples: the RL prompt, the reference as the target
# ---------------------------------------------------------------------------------------------------


@dataclass
class SFTExample:
    """One training (or evaluation) example, built the way the RL engine builds its prompt."""

    prompt_ids: list[int]  # the RL prompt, image tokens expanded
    target_ids: list[int]  # the reference + the end-of-turn token: the only tokens with a loss
    prompt_text: str  # the chat-templated prompt (with the vision placeholder), for the processor
    images: list[Any]  # PIL images, already resized by the dataset's qwen-vl-utils path
    row: dict[str, Any] = field(repr=False)  # the dataset row (label, category, objects) for the judge
    reference: str = ""


def dataset_config(data_config: DictConfig | dict | None = None) -> DictConfig:
    """The `QISafeDataset` config: the RL run's `data` node over the CPU-safe defaults.

    The node is resolved first: it usually interpolates other parts of the training config
    (`max_response_length: ${actor_rollout_ref...}`), which a detached copy could not resolve.
    """
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULT_DATA_CONFIG), _plain(data_config))
    cfg.filter_overlong_prompts_workers = None  # mandatory in-process filtering (see DEFAULT_DATA_CONFIG)
    return cfg


def end_of_turn(processor: Any) -> str:
    """The text the chat template closes an assistant turn with (`<|im_end|>` for Qwen).

    Read from the template itself rather than assumed, so a model whose template ends turns differently
    learns its own stop token: generation at RL time stops on it.
    """
    sentinel = "SAFERL_SENTINEL"
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": sentinel}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    closing = text.split(sentinel, 1)[1].strip()
    if not closing:
        raise ValueError("the chat template closes an assistant turn with nothing: no stop token to learn")
    return closing


def _prompt_inputs(processor: Any, text: str, images: list[Any], data_cfg: DictConfig) -> dict[str, Any]:
    """The processor's tensors for one prompt, through verl's own helper (same kwargs as the rollout)."""
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    mm_kwargs = _plain(data_cfg.get("mm_processor_kwargs"))
    return build_multimodal_processor_inputs(
        processor, text=[text], images=images or None, mm_processor_kwargs=mm_kwargs or None
    )


def _render_prompt(
    processor: Any, turns: list[Any], images: list[Any], data_cfg: DictConfig, template_kwargs: dict[str, Any]
) -> tuple[str, list[int]]:
    """The chat-templated prompt of `turns`, with the generation prompt, and its token ids."""
    from verl.utils.tokenizer.chat_template import apply_chat_template

    text = apply_chat_template(
        processor, turns, tokenize=False, add_generation_prompt=True, **template_kwargs
    )
    return text, _prompt_inputs(processor, text, images, data_cfg)["input_ids"][0].tolist()


def _plain(node: Any) -> dict[str, Any]:
    """A config node (or None) as a plain dict, for keyword arguments."""
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def _files(train_file: TrainFiles) -> list[Path]:
    """One file or several (verl's `data.train_files` may be a list), as paths."""
    if isinstance(train_file, str | os.PathLike):
        return [Path(train_file)]
    return [Path(f) for f in train_file]


def _as_verl_file(path: Path, scratch: Path) -> Path:
    """A verl-format parquet for `path`: itself, or a QI-Safe-10K file converted like the RL data is."""
    import pyarrow.parquet as pq

    from saferl.data.verl_format import convert_file

    names = set(pq.read_schema(path).names)
    if "prompt" in names and "extra_info" in names:
        return path
    if {"question", "image", "safety_label"} <= names:
        out = scratch / f"{path.stem}.verl.parquet"
        convert_file(path, out)
        return out
    raise ValueError(f"{path}: neither a verl-format file (prompt, extra_info) nor a QI-Safe-10K file")


def build_examples(
    data_file: TrainFiles,
    processor: Any,
    data_config: DictConfig | dict | None = None,
    require_reference: bool = True,
    reflection: DictConfig | None = None,
    attempt: str = "",
) -> list[SFTExample]:
    """Every row of `data_file` as an `SFTExample`, prompts rendered exactly as the RL engine renders them.

    Rows go through `QISafeDataset` (messages with the image, the dataset's image resizing), the
    processor's chat template with the generation prompt, and the processor call verl's agent loop
    makes. The target is the reference tokenised on its own (what the model would emit token by token)
    and the template's end-of-turn token.

    With `reflection` (the rollout's `saferl.rollout.reflection` templates), each unsafe row also gives
    a second example: its prompt goes on with `attempt` (a complying answer) and the reflection
    `safe_reflect` would append to it, and the target is the same reference. It teaches the reply to a
    reflection, not the first answer's decision, which stays RL's.
    """

    from saferl.data.dataset import QISafeDataset

    tokenizer = processor.tokenizer
    cfg = dataset_config(data_config)
    template_kwargs = _plain(cfg.get("apply_chat_template_kwargs"))
    end_ids = tokenizer.encode(end_of_turn(processor), add_special_tokens=False)
    with tempfile.TemporaryDirectory(prefix="saferl-warm-start-") as scratch:
        sources = [str(_as_verl_file(f, Path(scratch))) for f in _files(data_file)]
        if cfg.get("cache_dir") is None:
            cfg.cache_dir = scratch  # only used for remote files; keep it away from ~/.cache
        dataset = QISafeDataset(sources, tokenizer, cfg, processor=processor)
        examples = []
        for index in range(len(dataset)):
            row = dataset[index]
            messages = row["raw_prompt"]
            images, _, _ = dataset._process_multi_modal_info(messages, dataset.image_patch_size, cfg)
            text, prompt_ids = _render_prompt(processor, messages, images or [], cfg, template_kwargs)
            reference = str((row.get("extra_info") or {}).get("reference") or "")
            if not reference.strip() and require_reference:
                logger.warning("warm start: row %s has no reference; skipped", row.get("sample_id"))
                continue
            target = tokenizer.encode(reference, add_special_tokens=False) + end_ids
            examples.append(SFTExample(prompt_ids, target, text, list(images or []), row, reference))
            if reflection is not None and row.get("safety_label") == "unsafe":
                from rollout.reflect_loop import reflection_message

                message, _ = reflection_message(
                    reflection, row.get("category"), str(row.get("question") or ""), attempt
                )
                turns = [
                    *messages,
                    {"role": "assistant", "content": attempt},
                    {"role": "user", "content": message},
                ]
                text, prompt_ids = _render_prompt(processor, turns, images or [], cfg, template_kwargs)
                examples.append(SFTExample(prompt_ids, target, text, list(images or []), row, reference))
    if not examples:
        raise ValueError(f"{data_file}: no rows with a reference to fine-tune on")
    return examples


def stage_examples(
    data_file: TrainFiles, processor: Any, cfg: DictConfig, data_config: DictConfig | dict | None = None
) -> list[SFTExample]:
    """What the stage imitates under its config `cfg` (`saferl.warm_start`): `build_examples`, with the
    reflection examples when `cfg.reflection` is set. The stage and `--measure` both build them here."""
    return build_examples(
        data_file,
        processor,
        data_config,
        reflection=cfg.get("reflection"),
        attempt=cfg.get("reflection_attempt", ""),
    )


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------


def collate(
    examples: Sequence[SFTExample], processor: Any, max_length: int, data_config: DictConfig | None = None
) -> dict[str, Any]:
    """A right-padded batch: prompt + target ids, labels IGNORE_INDEX on the prompt and the padding.

    Images go through the same processor call as the prompt, so the image features match the prompt's
    image tokens one for one. A sequence longer than `max_length` loses the end of its target (never the
    prompt: cutting image tokens would break the image features).
    """
    import torch

    cfg = dataset_config(data_config)
    pad_id = processor.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else 0
    rows, pixel_values, grids = [], [], []
    for ex in examples:
        if len(ex.prompt_ids) >= max_length:
            raise ValueError(f"a prompt of {len(ex.prompt_ids)} tokens leaves no room under max_length")
        inputs = _prompt_inputs(processor, ex.prompt_text, ex.images, cfg)
        if inputs["input_ids"][0].tolist() != ex.prompt_ids:
            raise RuntimeError("the processor rendered a prompt differently from when it was built")
        target = ex.target_ids[: max_length - len(ex.prompt_ids)]
        ids = ex.prompt_ids + target
        labels = [IGNORE_INDEX] * len(ex.prompt_ids) + target
        types = inputs["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in inputs else None
        rows.append((ids, labels, types))
        if "pixel_values" in inputs:
            pixel_values.append(inputs["pixel_values"])
            grids.append(inputs["image_grid_thw"])
    width = max(len(ids) for ids, _, _ in rows)
    batch: dict[str, Any] = {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in rows]),
        "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab, _ in rows]),
    }
    if all(types is not None for _, _, types in rows):
        batch["mm_token_type_ids"] = torch.tensor(
            [types + [0] * (width - len(types)) for _, _, types in rows]
        )
    if pixel_values:
        batch["pixel_values"] = torch.cat(pixel_values)
        batch["image_grid_thw"] = torch.cat(grids)
    return batch


def sft_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean next-token cross-entropy over the labelled (assistant) tokens of the batch."""
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def _batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of example indices: a fresh seeded permutation per epoch, the tail carried over."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    pending: list[int] = []
    while True:
        while len(pending) < batch_size:
            pending.extend(torch.randperm(n, generator=generator).tolist())
        yield pending[:batch_size]
        pending = pending[batch_size:]


def train_sft(
    model: Any,
    processor: Any,
    examples: Sequence[SFTExample],
    cfg: DictConfig,
    progress: bool = True,
    on_step: Callable[[int, Any], None] | None = None,
    data_config: DictConfig | dict | None = None,
) -> list[float]:
    """`cfg.steps` AdamW steps on the examples at a constant learning rate; returns the loss per step.

    `on_step(step, model)` runs after each step (and with step 0 before the first): the measurement
    reads several step counts off one run, which is exact because nothing depends on the total.
    """
    import torch
    from tqdm.auto import tqdm

    steps, batch_size = int(cfg.steps), min(int(cfg.batch_size), len(examples))
    torch.manual_seed(int(cfg.seed))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=float(cfg.lr),
        weight_decay=float(cfg.weight_decay),
    )
    truncated = sum(len(e.prompt_ids) + len(e.target_ids) > int(cfg.max_length) for e in examples)
    if truncated:
        logger.warning(
            "warm start: %d of %d examples cut at max_length %s", truncated, len(examples), cfg.max_length
        )
    losses: list[float] = []
    if on_step is not None:
        on_step(0, model)
    model.train()
    batches = _batches(len(examples), batch_size, int(cfg.seed))
    with tqdm(total=steps, desc="warm start (SFT)", disable=not progress, unit="step") as bar:
        for step in range(1, steps + 1):
            batch = collate([examples[i] for i in next(batches)], processor, int(cfg.max_length), data_config)
            loss = sft_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_step is not None:
                model.eval()
                on_step(step, model)
                model.train()
    model.eval()
    return losses


# ---------------------------------------------------------------------------------------------------
# Cache: fingerprint, marker, atomic output
# ---------------------------------------------------------------------------------------------------


def _sha256_file(path: Path, digest: Any | None = None) -> str:
    h = digest or hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_model_dir(path: str | Path) -> str:
    """sha256 over every file of a checkpoint directory (relative names and contents; hidden files out).

    Contents, not mtimes: a copied or re-downloaded base model is the same model, and a rebuilt one
    with different weights is not. For a multi-GB checkpoint this reads it once per call (seconds).
    """
    root = Path(path)
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(str(rel).encode() + b"\0")
        h.update(_sha256_file(file).encode() + b"\0")
    return h.hexdigest()


def fingerprint(
    model_path: str | Path,
    train_file: TrainFiles,
    cfg: DictConfig,
    data_config: DictConfig | dict | None = None,
) -> tuple[str, dict[str, Any]]:
    """The cache key of a warm start and what it was computed from (recorded in the marker)."""
    train_cfg = OmegaConf.to_container(cfg, resolve=True)
    data_cfg = OmegaConf.to_container(dataset_config(data_config), resolve=True)
    data_cfg = {k: v for k, v in data_cfg.items() if k in DATA_KEYS_FINGERPRINTED}
    inputs = {
        "version": WARM_START_VERSION,
        "base_model": hash_model_dir(model_path),
        "train_files": [_sha256_file(Path(f)) for f in _files(train_file)],
        "cfg": train_cfg,
        "data": data_cfg,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest(), inputs


def read_marker(output_dir: str | Path) -> dict[str, Any] | None:
    """The marker of a finished warm start, or None when there is none or it is unreadable."""
    try:
        return json.loads((Path(output_dir) / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_done(output_dir: str | Path, key: str) -> bool:
    """A complete checkpoint whose marker carries this fingerprint: nothing less counts as done."""
    from saferl.models.checkpoint import missing_checkpoint_files

    marker = read_marker(output_dir)
    return bool(marker) and marker.get("fingerprint") == key and not missing_checkpoint_files(output_dir)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(output_dir: Path) -> None:
    """Temp dirs of runs that died on this machine (their pid is gone): never used, only removed."""
    for path in output_dir.parent.glob(f".{output_dir.name}.warm-*"):
        match = _STAGING.search(path.name[len(output_dir.name) + 1 :])
        if match and not _pid_alive(int(match.group(1))):
            logger.info("warm start: removing %s, left by a run that died", path)
            shutil.rmtree(path, ignore_errors=True)


_CHECKPOINT_FILES = (MARKER, "config.json", "model.safetensors", "model.safetensors.index.json")


def _check_replaceable(output_dir: Path, model_path: Path) -> None:
    """Refuse an output that is not ours to replace: the base model itself, or a directory that is not
    a (possibly partial) checkpoint. A retrain replaces the output whole, so a mistyped `--out` pointing
    at a folder of other things must fail here rather than lose that folder."""
    if output_dir == model_path.resolve():
        raise ValueError(f"warm start output {output_dir} is the base model itself")
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ValueError(f"warm start output {output_dir} exists and is not a directory")
    entries = list(output_dir.iterdir())
    flat = all(e.is_file() for e in entries)
    if entries and not (flat and any((output_dir / name).is_file() for name in _CHECKPOINT_FILES)):
        raise ValueError(f"warm start output {output_dir} exists and is not a checkpoint directory")


def _commit(staging: Path, output_dir: Path, key: str) -> None:
    """Rename the finished staging dir into place; a stale or unfinished output is moved aside first."""
    if output_dir.exists():
        if is_done(output_dir, key):  # a concurrent run with the same inputs finished first
            shutil.rmtree(staging, ignore_errors=True)
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
        os.replace(output_dir, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(staging, output_dir)
    except OSError:
        if not is_done(output_dir, key):
            raise
        shutil.rmtree(staging, ignore_errors=True)


def warm_start(
    model_path: str | Path,
    train_file: TrainFiles,
    cfg: DictConfig,
    output_dir: str | Path,
    progress: bool = True,
    data_config: DictConfig | dict | None = None,
) -> Path:
    """Fine-tune `model_path` on the references of `train_file`; return the checkpoint to start RL from.

    `train_file` is the RL train file (verl format, as `saferl.data to-verl` writes it) or a QI-Safe-10K
    parquet (converted the same way). `data_config` is the RL run's `data` node (image pixel bounds,
    chat-template kwargs), so the prompts match the RL prompts. Cached in `output_dir` by the fingerprint
    of every input. Whether a run warm-starts at all is `saferl.stages` (saferl.train).
    """
    from saferl.models.checkpoint import apply_umask, check_checkpoint_dir, load_vlm, save_vlm

    model_path = check_checkpoint_dir(model_path)
    if isinstance(train_file, ListConfig):
        train_file = list(train_file)
    output_dir = Path(output_dir).expanduser().resolve()
    key, inputs = fingerprint(model_path, train_file, cfg, data_config)
    if is_done(output_dir, key):
        logger.info("warm start: %s is up to date (fingerprint %s)", output_dir, key[:12])
        return output_dir
    _check_replaceable(output_dir, model_path)
    if output_dir.exists():
        logger.info("warm start: %s has no matching finished warm start; retraining", output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(output_dir)

    start = time.perf_counter()
    processor, model = load_vlm(model_path)
    examples = stage_examples(train_file, processor, cfg, data_config)
    losses = train_sft(model, processor, examples, cfg, progress=progress, data_config=data_config)
    if losses:
        tail = losses[-10:]
        logger.info(
            "warm start: %d steps on %d examples, loss %.3f (first step) -> %.3f (last), %.3f (mean of the"
            " last %d) in %.0f s",
            len(losses),
            len(examples),
            losses[0],
            losses[-1],
            sum(tail) / len(tail),
            len(tail),
            time.perf_counter() - start,
        )

    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.warm-{os.getpid()}.", dir=output_dir.parent))
    try:
        save_vlm(model, processor, staging)
        check_checkpoint_dir(staging)
        marker = {
            "fingerprint": key,
            "run_id": uuid.uuid4().hex,
            "base_model": str(model_path),
            "train_files": [str(f) for f in _files(train_file)],
            "inputs": inputs,
            "examples": len(examples),
            "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None},
            "loss_curve": [round(x, 5) for x in losses],
            "elapsed_s": round(time.perf_counter() - start, 2),
        }
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # last: it means "complete"
        apply_umask(staging)
        _commit(staging, output_dir, key)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


# ---------------------------------------------------------------------------------------------------
# Measurement: format, harmful and refusal rates on the val split
# ---------------------------------------------------------------------------------------------------


@dataclass
class Rates:
    """What the rule judge says of a set of responses to the val prompts."""

    n: int
    think_first: float  # share that open with <think>
    format10: float  # share with one <think> block at the start and an answer after it
    harmful: float  # share of unsafe prompts answered without a refusal (flag `harmful`)
    refusal_safe: float  # share of safe prompts refused (flag `over_refusal`)
    no_answer: float  # share with nothing after the reasoning (truncated or never closed)
    mean_tokens: float


def generate_responses(
    model: Any,
    processor: Any,
    examples: Sequence[SFTExample],
    *,
    do_sample: bool,
    num_samples: int = 1,
    max_new_tokens: int = 128,
    batch_size: int = 40,
    seed: int = 0,
    temperature: float = 1.0,
) -> list[list[tuple[str, int]]]:
    """`num_samples` responses per example as (text, new tokens), greedy or sampled at `temperature`.

    Batches are left-padded; sampling is plain (no top-k/top-p), like the rollout's.
    Text is decoded without special tokens, as the agent loop decodes it for the judge.
    """
    import torch

    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[list[tuple[str, int]]] = []
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            for begin in range(0, len(examples), batch_size):
                chunk = examples[begin : begin + batch_size]
                inputs = processor(
                    text=[ex.prompt_text for ex in chunk],
                    images=[img for ex in chunk for img in ex.images] or None,
                    padding=True,
                    return_tensors="pt",
                )
                kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
                if do_sample:
                    kwargs.update(
                        temperature=temperature, top_k=0, top_p=1.0, num_return_sequences=num_samples
                    )
                generated = model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1] :]
                per = num_samples if do_sample else 1
                stops = set(_as_list(model.generation_config.eos_token_id))
                for i in range(len(chunk)):
                    responses = []
                    for seq in generated[i * per : (i + 1) * per].tolist():
                        length = next((j + 1 for j, t in enumerate(seq) if t in stops), len(seq))
                        text = tokenizer.decode(seq[:length], skip_special_tokens=True)
                        responses.append((text, length))
                    out.append(responses)
    finally:
        tokenizer.padding_side = side
    return out


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def judge_rates(examples: Sequence[SFTExample], responses: Sequence[Sequence[tuple[str, int]]]) -> Rates:
    """Score every response with the reward's rule judge, as the RL reward would, and count the flags."""
    from rewards.judge import HARMFUL, REFUSAL
    from rewards.judges.rule import split_response
    from rewards.rubric import load_reward_config
    from rewards.scorer import RewardScorer
    from rewards.verl_manager import judge_input_from_row

    scorer = RewardScorer.from_config(load_reward_config(overrides=["judge.kind=rule"]))
    items, labels, texts, lengths = [], [], [], []
    for ex, group in zip(examples, responses, strict=True):
        for text, length in group:
            items.append(judge_input_from_row(ex.row, text))
            labels.append(ex.row.get("safety_label"))
            texts.append(text)
            lengths.append(length)
    scored = scorer.score_sync(items)
    unsafe = [s for s, lab in zip(scored, labels, strict=True) if lab == "unsafe"]
    safe = [s for s, lab in zip(scored, labels, strict=True) if lab == "safe"]
    return Rates(
        n=len(scored),
        think_first=sum(t.lstrip().startswith("<think>") for t in texts) / len(texts),
        format10=sum(s.criteria.get("format") == 10 for s in scored) / len(scored),
        harmful=sum(HARMFUL in s.flags for s in unsafe) / max(1, len(unsafe)),
        refusal_safe=sum(REFUSAL in s.flags for s in safe) / max(1, len(safe)),
        no_answer=sum(not split_response(t)[1] for t in texts) / len(texts),
        mean_tokens=sum(lengths) / len(lengths),
    )


def measure(
    step_counts: Sequence[int],
    cfg: DictConfig,
    *,
    num_samples: int = 2,
    max_new_tokens: int = 512,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train the tiny model once and evaluate it on the sample's val split at each step count.

    One run serves every step count (constant learning rate: steps=N is the first N steps of a longer
    run). At each count: greedy decoding (what validation uses) and `num_samples` samples per prompt
    at temperature 1.0 (what RL rollouts use), judged by the rule judge.
    """
    from saferl.models.checkpoint import load_vlm
    from saferl.models.tiny import ensure_tiny_model

    counts = sorted(set(int(s) for s in step_counts))
    run_cfg = OmegaConf.merge(cfg, {"steps": max(counts)})
    rows: list[dict[str, Any]] = []
    processor, model = load_vlm(ensure_tiny_model(cache_dir=cache_dir))
    train = stage_examples(SAMPLE_DIR / f"{cfg.split}.parquet", processor, cfg)
    val = build_examples(SAMPLE_DIR / "val.parquet", processor)

    def evaluate(step: int, model: Any) -> None:
        if step not in counts:
            return
        t0 = time.perf_counter()
        greedy = judge_rates(
            val, generate_responses(model, processor, val, do_sample=False, max_new_tokens=max_new_tokens)
        )
        sampled = judge_rates(
            val,
            generate_responses(
                model,
                processor,
                val,
                do_sample=True,
                num_samples=num_samples,
                max_new_tokens=max_new_tokens,
                seed=step,
            ),
        )
        rows.append({"steps": step, "greedy": greedy, "t1.0": sampled, "eval_s": time.perf_counter() - t0})

    losses = train_sft(model, processor, train, run_cfg, progress=progress, on_step=evaluate)
    for row in rows:  # the mean of the last 10 batches: one batch's loss is noisy
        recent = losses[max(0, row["steps"] - 10) : row["steps"]]
        row["loss"] = sum(recent) / len(recent) if recent else None
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The measurement as a Markdown table (rates in percent)."""
    head = (
        "| steps | train loss | decode | <think> first | format-10 | harmful (unsafe) | refusal (safe) "
        "| no answer | tokens |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for row in rows:
        loss = "-" if row["loss"] is None else f"{row['loss']:.2f}"
        for decode in ("t1.0", "greedy"):
            r: Rates = row[decode]
            lines.append(
                f"| {row['steps']} | {loss} | {decode} (n={r.n}) | {100 * r.think_first:.0f}% | "
                f"{100 * r.format10:.0f}% | "
                f"{100 * r.harmful:.0f}% | {100 * r.refusal_safe:.0f}% | {100 * r.no_answer:.0f}% | "
                f"{r.mean_tokens:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saferl.warm_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="print the step-count table on the sample")
    parser.add_argument("--steps", default="0,50,100,200,300,400", help="--measure: step counts to evaluate")
    parser.add_argument("--samples", type=int, default=2, help="--measure: samples per val prompt at T=1.0")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=512,
        help="--measure: response budget (the sample's references are 109-293 tiny-BPE tokens)",
    )
    parser.add_argument("--model", type=Path, help="base checkpoint (default: the tiny offline model)")
    parser.add_argument("--train", type=Path, help="train file (default: the shipped sample's train split)")
    parser.add_argument("--out", type=Path, help="output checkpoint directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. steps=100)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_warm_start_config(args.overrides)

    if args.measure:
        start = time.perf_counter()
        counts = [int(s) for s in args.steps.split(",") if s.strip()]
        rows = measure(
            counts, cfg, num_samples=args.samples, max_new_tokens=args.max_new_tokens, progress=not args.quiet
        )
        print(format_table(rows))
        print(
            f"(trained on the sample's {cfg.split} split, measured on its val split; t1.0: {args.samples} "
            "samples per prompt; "
            f"max_new_tokens={args.max_new_tokens}; lr={cfg.lr}, batch_size={cfg.batch_size}, seed={cfg.seed}; "
            f"{time.perf_counter() - start:.0f} s)"
        )
        return 0

    if args.out is None:
        parser.error("--out is required (or --measure)")
    from saferl.models.tiny import ensure_tiny_model

    model = args.model or ensure_tiny_model()
    train = args.train or SAMPLE_DIR / f"{cfg.split}.parquet"
    print(warm_start(model, train, cfg, args.out, progress=not args.quiet))
    return 0


if __name__ == "__main__":
    sys.exit(main())
