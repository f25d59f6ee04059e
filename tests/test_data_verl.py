"""The sample converts to verl's RL format and loads through verl's machinery with our dataset class."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
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


def _bad_copy(tmp_path: Path) -> tuple[Path, list[str]]:
    """The sample's val split with an unknown label, a truncated image, a missing category and a null
    split: the rows the converter used to pass with exit 0 (or crash on, for the null split)."""
    rows = pq.read_table(SAMPLE / "val.parquet").to_pylist()
    rows[0]["safety_label"] = "harmful"
    rows[1]["image"] = rows[1]["image"][:300]
    rows[2]["category"] = None
    rows[3]["split"] = None
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), src / "val.parquet")
    return src, [r["id"] for r in rows[:4]]


def test_to_verl_refuses_bad_rows_with_the_validators_report(tmp_path: Path) -> None:
    src, bad = _bad_copy(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "saferl.data", "to-verl", str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "4 bad" in result.stderr and all(f"id {i!r}" in result.stderr for i in bad)
    assert "drop_bad_rows" in result.stderr
    assert not (tmp_path / "out" / "val.parquet").exists()  # nothing converted


def test_to_verl_drops_bad_rows_only_when_asked_and_keeps_them(tmp_path: Path) -> None:
    src, bad = _bad_copy(tmp_path)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "saferl.data", "to-verl", str(src), str(out), "--drop-bad-rows"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    total = pq.read_table(src / "val.parquet").num_rows
    converted = pq.read_table(out / "val.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects" / "val.rejects.parquet").to_pylist()
    assert len(converted) == total - 4 and [r["id"] for r in rejects] == bad  # nothing lost
    assert all(r["reject_reasons"] for r in rejects)
    assert not set(bad) & {r["extra_info"]["id"] for r in converted}


def test_training_refuses_bad_data_before_anything_starts(tmp_path: Path) -> None:
    src, bad = _bad_copy(tmp_path)
    pq.write_table(pq.read_table(SAMPLE / "train.parquet"), src / "train.parquet")
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saferl.train",
            "+exp=tiny",
            f"saferl.data.dir={src}",
            f"trainer.default_local_dir={run}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "saferl: refused:" in result.stderr and all(f"id {i!r}" in result.stderr for i in bad)
    assert not (run / "data" / "train.parquet").exists() and not (run / "warm_start").exists()
