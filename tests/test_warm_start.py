"""The policy-guided SFT warm start: real files, the real tiny model, real training (a few steps)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saferl.warm_start import (
    IGNORE_INDEX,
    MARKER,
    build_examples,
    collate,
    end_of_turn,
    is_done,
    load_warm_start_config,
    read_marker,
    stage_examples,
    warm_start,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "QI-Safe-10K" / "sample"
PLUMBING_STEPS = 6  # enough for the loss to move; the plumbing tests do not need a trained policy


@pytest.fixture(scope="module")
def verl_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample converted to verl format, plus a 24-row balanced train subset for fast plumbing runs."""
    from saferl.data.verl_format import convert_dataset

    out = tmp_path_factory.mktemp("warm-verl")
    convert_dataset(SAMPLE, out)
    rows = pq.read_table(out / "train.parquet").to_pylist()
    small = [r for r in rows if r["extra_info"]["safety_label"] == "unsafe"][:12]
    small += [r for r in rows if r["extra_info"]["safety_label"] == "safe"][:12]
    pq.write_table(pa.Table.from_pylist(small), out / "train_small.parquet")
    return out


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    from saferl.models.checkpoint import load_vlm

    return load_vlm(tiny_model_dir)[0]


@pytest.fixture(scope="module")
def small_run(tiny_model_dir: Path, verl_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short warm start, shared by the cache and checkpoint tests."""
    cfg = load_warm_start_config([f"steps={PLUMBING_STEPS}", "batch_size=4"])
    out = tmp_path_factory.mktemp("warm-out") / "policy"
    path = warm_start(tiny_model_dir, verl_data / "train_small.parquet", cfg, out, progress=False)
    return {"cfg": cfg, "out": path, "marker": read_marker(path)}


def test_config_is_small_and_documented() -> None:
    path = Path(__file__).resolve().parents[1] / "conf" / "saferl" / "warm_start" / "default.yaml"
    assert path.read_text().splitlines()[0] == "# @package saferl.warm_start"
    cfg = load_warm_start_config()
    assert set(cfg) == {
        "split",
        "steps",
        "batch_size",
        "lr",
        "weight_decay",
        "max_length",
        "seed",
        "reflection",
        "reflection_attempt",
    }
    assert load_warm_start_config(["steps=7"]).steps == 7


def test_reflection_examples_follow_each_unsafe_row_with_its_reflection(verl_data: Path, processor) -> None:
    """With `reflection` set, every unsafe row gives a second example: its prompt, the complying attempt and
    the reflection the rollout would append, imitating the same reference; safe rows give one."""
    from rollout.reflect_loop import load_rollout_config

    cfg = load_warm_start_config()
    plain = stage_examples(verl_data / "train_small.parquet", processor, cfg)
    cfg.reflection = load_rollout_config().reflection
    both = stage_examples(verl_data / "train_small.parquet", processor, cfg)
    unsafe = [ex for ex in plain if ex.row["safety_label"] == "unsafe"]
    assert unsafe and len(both) == len(plain) + len(unsafe)
    second = [b for a, b in itertools.pairwise(both) if a.row is b.row]  # a row's second example
    assert len(second) == len(unsafe)
    for ex in second:
        assert ex.row["safety_label"] == "unsafe"
        assert cfg.reflection_attempt in ex.prompt_text
        assert "Your previous answer may be unsafe" in ex.prompt_text
        assert ex.target_ids == next(p.target_ids for p in plain if p.row["sample_id"] == ex.row["sample_id"])


def test_loss_mask_covers_exactly_the_assistant_tokens(verl_data: Path, processor) -> None:
    examples = build_examples(verl_data / "train_small.parquet", processor)
    batch = collate(examples[:3], processor, max_length=1024)
    end = end_of_turn(processor)
    assert end == "<|im_end|>"
    for row, ex in enumerate(examples[:3]):
        labels = batch["labels"][row]
        labelled = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        # One contiguous span right after the prompt, then only padding.
        assert labelled == list(range(len(ex.prompt_ids), len(ex.prompt_ids) + len(ex.target_ids)))
        assert batch["input_ids"][row, : len(ex.prompt_ids)].tolist() == ex.prompt_ids
        assert labels[labelled].tolist() == batch["input_ids"][row, labelled].tolist()
        decoded = processor.tokenizer.decode(batch["input_ids"][row, labelled].tolist())
        assert decoded == ex.reference + end
        # The prompt + labelled span is the chat template's rendering of the conversation with the answer.
        messages = [*ex.row["raw_prompt"], {"role": "assistant", "content": ex.reference}]
        full = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        assert full.startswith(ex.prompt_text + decoded)
        assert full[len(ex.prompt_text + decoded) :].strip() == ""


def test_loss_decreases_and_output_loads_like_the_base(small_run: dict, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText

    from saferl.models.checkpoint import load_vlm

    curve = small_run["marker"]["loss_curve"]
    assert len(curve) == PLUMBING_STEPS
    assert curve[-1] < curve[0] - 0.2, curve
    processor, model = load_vlm(small_run["out"])
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert type(model) is type(base)
    assert processor.tokenizer.get_vocab() == load_vlm(tiny_model_dir)[0].tokenizer.get_vocab()
    changed = [name for name, p in model.state_dict().items() if not p.equal(base.state_dict()[name])]
    assert changed, "the saved weights are the base model's"


def test_second_call_is_cached_and_a_changed_cfg_retrains(
    small_run: dict, tiny_model_dir: Path, verl_data: Path
) -> None:
    out, cfg, first = small_run["out"], small_run["cfg"], small_run["marker"]
    start = time.perf_counter()
    again = warm_start(tiny_model_dir, verl_data / "train_small.parquet", cfg, out, progress=False)
    assert again == out
    assert read_marker(out)["run_id"] == first["run_id"]  # not retrained
    assert time.perf_counter() - start < 5

    # Whether to run is not an input of the weights: toggling it elsewhere does not invalidate the cache.
    assert is_done(out, first["fingerprint"])
    changed = load_warm_start_config([f"steps={PLUMBING_STEPS - 2}", "batch_size=4"])
    warm_start(tiny_model_dir, verl_data / "train_small.parquet", changed, out, progress=False)
    marker = read_marker(out)
    assert marker["run_id"] != first["run_id"]
    assert marker["fingerprint"] != first["fingerprint"]
    assert len(marker["loss_curve"]) == PLUMBING_STEPS - 2
    assert not list(out.parent.glob(f".{out.name}.*")), "temp dirs left next to the output"


def test_fingerprint_holds_what_changes_the_weights(tiny_model_dir: Path, verl_data: Path) -> None:
    from saferl.warm_start.cache import fingerprint

    cfg, train = load_warm_start_config(), verl_data / "train_small.parquet"
    key, inputs = fingerprint(tiny_model_dir, train, cfg, {"train_batch_size": 4})
    # RL-side settings do not change the warm start; a list of one file is that file.
    assert fingerprint(tiny_model_dir, [str(train)], cfg, {"train_batch_size": 16})[0] == key
    # What a row becomes, the data, the base weights and the training settings do.
    assert fingerprint(tiny_model_dir, train, cfg, {"image_max_pixels": 112 * 112})[0] != key
    assert fingerprint(tiny_model_dir, verl_data / "val.parquet", cfg)[0] != key
    assert fingerprint(tiny_model_dir, train, load_warm_start_config(["lr=1e-3"]))[0] != key
    assert inputs["base_model"] and inputs["train_files"] and inputs["cfg"]["steps"] == cfg.steps


def test_refuses_to_replace_what_is_not_a_checkpoint(
    tiny_model_dir: Path, verl_data: Path, tmp_path: Path
) -> None:
    cfg = load_warm_start_config(["steps=1"])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        warm_start(tiny_model_dir, verl_data / "train_small.parquet", cfg, tmp_path / "notes", progress=False)
    with pytest.raises(ValueError, match="base model itself"):
        warm_start(tiny_model_dir, verl_data / "train_small.parquet", cfg, tiny_model_dir, progress=False)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_half_written_output_is_not_taken_for_done(
    small_run: dict, tiny_model_dir: Path, verl_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "policy"
    shutil.copytree(small_run["out"], out)
    (out / MARKER).unlink()  # killed before the marker: weights present, not done
    # A temp dir left by a run that died (its pid no longer exists), holding a whole model and marker.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    staging = tmp_path / f".policy.warm-{int(dead.stdout)}.abc123"
    shutil.copytree(small_run["out"], staging)

    cfg = load_warm_start_config(["steps=2", "batch_size=4"])
    warm_start(tiny_model_dir, verl_data / "train_small.parquet", cfg, out, progress=False)
    marker = read_marker(out)
    assert marker is not None and len(marker["loss_curve"]) == 2
    assert not staging.exists()

    # A marker whose weights are missing is not done either.
    (out / "model.safetensors").unlink()
    assert not is_done(out, marker["fingerprint"])
    warm_start(tiny_model_dir, verl_data / "train_small.parquet", cfg, out, progress=False)
    assert (out / "model.safetensors").is_file()
    assert read_marker(out)["run_id"] != marker["run_id"]


@pytest.mark.slow  # the default is 300 steps on the whole train split: ~50 s on 2 cores
def test_default_warm_start_writes_think_first(
    tiny_model_dir: Path, verl_data: Path, tmp_path: Path, processor
) -> None:
    """The default config's policy opens its greedy answers with <think> on most val prompts."""
    from saferl.models.checkpoint import load_vlm
    from saferl.models.generation import generate_responses

    out = warm_start(
        tiny_model_dir,
        verl_data / "train.parquet",
        load_warm_start_config(),
        tmp_path / "policy",
        progress=False,
    )
    examples = build_examples(verl_data / "val.parquet", processor)
    handful = [ex.rendered for ex in examples[:6] + examples[-6:]]
    _, model = load_vlm(out)
    responses = generate_responses(model, processor, handful, do_sample=False, max_new_tokens=16)
    rate = sum(text.lstrip().startswith("<think>") for [(text, _)] in responses) / len(responses)
    assert rate >= 0.75, [text for [(text, _)] in responses]
    _, base = load_vlm(tiny_model_dir)
    base_responses = generate_responses(base, processor, handful, do_sample=False, max_new_tokens=16)
    assert not any(text.lstrip().startswith("<think>") for [(text, _)] in base_responses)
    assert json.loads((out / MARKER).read_text())["inputs"]["cfg"]["steps"] == load_warm_start_config().steps


def test_command_line_stage_reads_the_experiments_config(
    tiny_model_dir: Path, verl_data: Path, tmp_path: Path, saferl_cache: Path
) -> None:
    """`python -m saferl.warm_start --exp tiny`: the experiment's `saferl.warm_start` node with the
    command's overrides, and its `data` node for the prompts (tiny: max_prompt_length 512, not the
    dataset default 1024), both recorded in the marker; an unknown experiment is refused by name."""
    out = tmp_path / "policy"
    command = [sys.executable, "-m", "saferl.warm_start", "--exp", "tiny", "--quiet"]
    args = [
        "--model",
        str(tiny_model_dir),
        "--train",
        str(verl_data / "train_small.parquet"),
        "--out",
        str(out),
    ]
    result = subprocess.run(
        [*command, *args, "steps=2", "batch_size=4"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = read_marker(out)["inputs"]
    assert (inputs["cfg"]["steps"], inputs["cfg"]["lr"]) == (2, load_warm_start_config().lr)
    assert inputs["data"]["max_prompt_length"] == 512
    bad = subprocess.run(
        [sys.executable, "-m", "saferl.warm_start", "--exp", "tiny9", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "unknown experiment 'tiny9'; valid experiments:" in bad.stderr
