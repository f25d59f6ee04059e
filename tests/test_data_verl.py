"""The sample converts to verl's RL format and loads through verl's machinery with our dataset class."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn, get_dataset_class

from saferl.data.dataset import DatasetFormatError, QISafeDataset
from saferl.data.verl_format import DATA_SOURCE, convert_dataset
from saferl.models.checkpoint import load_vlm

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "QI-Safe-10K" / "sample"


@pytest.fixture(scope="module")
def verl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("verl")
    counts = convert_dataset(SAMPLE, out)
    assert counts == {"train": 216, "val": 108, "warm_start": 160}
    return out


def _config(**extra):
    return OmegaConf.create(
        {
            "prompt_key": "prompt",
            "image_key": "images",
            "max_prompt_length": 1024,
            "filter_overlong_prompts": True,
            # In-process: a forked pool after torch started its threads can deadlock (seen on CPU).
            "filter_overlong_prompts_workers": None,
            "truncation": "error",
            "return_raw_chat": True,
            "cache_dir": "/tmp/saferl-verl-cache-unused",
            "custom_cls": {"path": "pkg://saferl.data.dataset", "name": "QISafeDataset"},
            **extra,
        }
    )


def test_converted_rows_follow_verls_format(verl_dir: Path) -> None:
    row = pq.read_table(verl_dir / "val.parquet").to_pylist()[0]
    assert row["data_source"] == DATA_SOURCE
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].count("<image>") == 1
    assert isinstance(row["images"][0]["bytes"], bytes)
    assert row["reward_model"]["ground_truth"] == row["extra_info"]["safety_label"]
    assert {"safety_label", "category", "image_objects", "id", "question", "index"} <= row[
        "extra_info"
    ].keys()
    assert json.loads(row["extra_info"]["image_objects"])


def test_custom_cls_selects_our_dataset() -> None:
    cls = get_dataset_class(_config())
    assert cls is QISafeDataset and issubclass(cls, RLHFDataset)


def test_dataset_loads_rows_with_images_through_qwen_vl_utils(verl_dir: Path, tiny_model_dir: Path) -> None:
    processor, _ = load_vlm(tiny_model_dir)
    config = _config(image_max_pixels=112 * 112)
    dataset = QISafeDataset(str(verl_dir / "val.parquet"), processor.tokenizer, config, processor=processor)
    assert len(dataset) == 108
    row = dataset[0]
    assert row["safety_label"] in ("safe", "unsafe") and row["category"]
    assert row["sample_id"].startswith("synthetic:") and row["question"]
    assert isinstance(row["image_objects"], list) and row["image_objects"][0]["name"]
    image_part = next(p for p in row["raw_prompt"][0]["content"] if p["type"] == "image")
    assert image_part["max_pixels"] == 112 * 112

    # What verl's agent loop does with raw_prompt: qwen-vl-utils resizes, the processor tokenizes.
    images, _ = asyncio.run(
        QISafeDataset.process_vision_info(row["raw_prompt"], dataset.image_patch_size, config)
    )
    assert len(images) == 1 and images[0].width * images[0].height <= 112 * 112
    text = processor.apply_chat_template(row["raw_prompt"], tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    n_image = int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_image == int(inputs["image_grid_thw"].prod()) // 4 > 0

    batch = collate_fn([dataset[i] for i in range(4)])
    assert list(batch["safety_label"]) == [dataset[i]["safety_label"] for i in range(4)]


def test_dataset_names_a_row_without_a_label(verl_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = pq.read_table(verl_dir / "val.parquet").to_pylist()
    rows[3]["extra_info"]["safety_label"] = None
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    processor, _ = load_vlm(tiny_model_dir)
    with pytest.raises(DatasetFormatError, match=r"row 3 \(id 'synthetic:"):
        QISafeDataset(str(tmp_path / "bad.parquet"), processor.tokenizer, _config(), processor=processor)
