"""The one prompt builder (`saferl.data.prompts`): what the warm start, QI curation's sampler and
`saferl.generate` render is the prompt verl's agent loop renders, on the real tiny model and real files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image

from saferl.data.dataset import QISafeDataset
from saferl.data.prompts import PromptBuilder
from saferl.data.samplers import HFSampler
from saferl.data.verl_format import DEFAULT_PROMPT_TEMPLATE
from saferl.generate import as_row, demo_image
from saferl.models.checkpoint import load_vlm
from saferl.warm_start import build_examples

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "QI-Safe-10K" / "sample"
FORMAT_INSTRUCTION = DEFAULT_PROMPT_TEMPLATE.split("\n", 1)[1]


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    return load_vlm(tiny_model_dir)[0]


@pytest.fixture(scope="module")
def sample_rows() -> list[dict]:
    rows = pq.read_table(SAMPLE / "val.parquet").to_pylist()
    return [r for r in rows if r["safety_label"] == "unsafe"][:2] + [
        r for r in rows if r["safety_label"] == "safe"
    ][:2]


def test_prompt_is_token_identical_to_the_rl_prompt(qi_val_dataset, processor, tiny_model_dir: Path) -> None:
    """The builder's prompt equals what verl's agent loop builds from the same QISafeDataset row."""
    from transformers import AutoConfig
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    prompts = list(PromptBuilder(processor).from_files(qi_val_dataset.data_files[0]))
    builder = create_continuous_token_builder(
        processor.tokenizer,
        hf_model_type=AutoConfig.from_pretrained(tiny_model_dir).model_type,
        processor=processor,
    )
    assert len(prompts) == len(qi_val_dataset)
    for index in (0, 1, len(prompts) - 1):
        messages = qi_val_dataset[index]["raw_prompt"]
        images, _, _ = asyncio.run(
            QISafeDataset.process_multi_modal_info(
                messages, image_patch_size=processor.image_processor.patch_size, config=qi_val_dataset.config
            )
        )
        rl_prompt = builder.build_initial_tokens(messages, images=images)
        assert prompts[index].ids == rl_prompt
        assert rl_prompt.count(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")) > 0


def test_rows_in_memory_render_as_the_file_does(processor, sample_rows: list[dict], tmp_path: Path) -> None:
    """Curation's candidates (rows in memory) get the prompt RL trains on: the file's, format
    instruction included, for the same rows."""
    import pyarrow as pa

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(sample_rows), path)
    builder = PromptBuilder(processor)
    from_rows, from_file = builder.from_rows(sample_rows), list(builder.from_files(path))
    assert [p.row["sample_id"] for p in from_rows] == [r["id"] for r in sample_rows]
    assert [p.ids for p in from_rows] == [p.ids for p in from_file]
    assert all(
        FORMAT_INSTRUCTION in p.text and r["question"] in p.text
        for p, r in zip(from_rows, sample_rows, strict=True)
    )


def test_the_data_config_changes_the_prompt(processor, sample_rows: list[dict]) -> None:
    """The run's `data` node is honoured: a smaller image bound means fewer image tokens."""
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    default = PromptBuilder(processor).from_rows(sample_rows[:1])[0]
    small = PromptBuilder(processor, OmegaConf.create({"image_max_pixels": 28 * 28 * 4})).from_rows(
        sample_rows[:1]
    )[0]
    assert 0 < small.ids.count(pad) < default.ids.count(pad)


def test_every_generate_path_renders_through_the_builder(
    processor, tiny_model_dir: Path, sample_rows: list[dict], tmp_path: Path
) -> None:
    """The warm start's examples, QI curation's sampler and `saferl.generate` see one prompt per row."""
    import pyarrow as pa

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(sample_rows), path)
    expected = [p.ids for p in PromptBuilder(processor).from_rows(sample_rows)]
    assert [e.prompt_ids for e in build_examples(path, processor)] == expected
    sampler = HFSampler(tiny_model_dir, max_new_tokens=4, seed=3)
    assert [p.ids for p in sampler.prompts.from_rows(sample_rows)] == expected
    first = sampler.sample(sample_rows, k=2)
    assert [len(group) for group in first] == [2] * len(sample_rows)
    assert sampler.sample(sample_rows[::-1], k=2) == first[::-1]  # seeded per row, not by call order
    (demo,) = PromptBuilder(processor).from_rows([as_row(demo_image(), "What is in the picture?")])
    assert FORMAT_INSTRUCTION in demo.text and isinstance(demo.images[0], Image.Image)


def test_an_overlong_candidate_is_named(tiny_model_dir: Path, sample_rows: list[dict]) -> None:
    sampler = HFSampler(tiny_model_dir, max_new_tokens=2)
    sampler.prompts.cfg.max_prompt_length = 8
    with pytest.raises(ValueError, match=rf"row '{sample_rows[0]['id']}'.*max_prompt_length"):
        sampler.sample(sample_rows[:1], k=1)
