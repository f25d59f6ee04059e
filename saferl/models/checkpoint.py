"""What a complete Hugging Face VLM checkpoint directory holds, and loading one.

A half-copied checkpoint (an interrupted `rsync`, a shard that never arrived) otherwise fails deep
inside `from_pretrained` with an error about a tensor or a tokenizer attribute. Checking up front lets
every saferl entry point say which file is missing, in one line, before any work starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

WEIGHTS_SINGLE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


class IncompleteCheckpointError(FileNotFoundError):
    """A checkpoint directory lacks a file that loading needs; the message names it."""


def missing_checkpoint_files(path: str | Path) -> list[str]:
    """Names of the files `path` needs and lacks (empty when complete).

    Mirrors what `AutoProcessor` and `AutoModelForImageTextToText` read for a Qwen2.5-VL checkpoint:
    config, weights (one file, or an index and every shard it lists), tokenizer (`tokenizer.json` or the
    `vocab.json` + `merges.txt` pair), tokenizer config, image-processor config and a chat template.
    A path that is not a directory is reported as `[path]`.
    """
    root = Path(path)
    if not root.is_dir():
        return [str(root)]
    missing: list[str] = []
    for name in ("config.json", "tokenizer_config.json"):
        if not (root / name).is_file():
            missing.append(name)
    # Hub checkpoints carry preprocessor_config.json; transformers 5 writes processor_config.json with
    # the image processor nested inside. Either one configures the image processor.
    if not (root / "preprocessor_config.json").is_file() and not _has_nested_image_processor(root):
        missing.append("preprocessor_config.json (or processor_config.json with an image_processor)")

    if (root / WEIGHTS_INDEX).is_file():
        try:
            index = json.loads((root / WEIGHTS_INDEX).read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            missing.append(f"{WEIGHTS_INDEX} (unreadable: {err})")
            shards = []
        missing.extend(shard for shard in shards if not (root / shard).is_file())
    elif not (root / WEIGHTS_SINGLE).is_file():
        missing.append(f"{WEIGHTS_SINGLE} (or {WEIGHTS_INDEX} with its shards)")

    if not (root / "tokenizer.json").is_file():
        missing.extend(name for name in ("vocab.json", "merges.txt") if not (root / name).is_file())
        if "vocab.json" in missing or "merges.txt" in missing:
            missing.append("tokenizer.json")

    if not any((root / name).is_file() for name in CHAT_TEMPLATE_FILES) and not _template_in_tokenizer_config(
        root
    ):
        missing.append(f"{CHAT_TEMPLATE_FILES[0]} (or a chat_template in tokenizer_config.json)")
    return missing


def _has_nested_image_processor(root: Path) -> bool:
    try:
        return "image_processor" in json.loads((root / "processor_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _template_in_tokenizer_config(root: Path) -> bool:
    try:
        return bool(json.loads((root / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, json.JSONDecodeError):
        return False


def check_checkpoint_dir(path: str | Path) -> Path:
    """Return `path` as a Path, or raise `IncompleteCheckpointError` naming every missing file."""
    missing = missing_checkpoint_files(path)
    if missing:
        if missing == [str(path)]:
            raise IncompleteCheckpointError(f"checkpoint directory {path} does not exist")
        raise IncompleteCheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return Path(path)


def load_vlm(path: str | Path, dtype: Any = None, device: str | None = None) -> tuple[Any, Any]:
    """Load `(processor, model)` from a local checkpoint through the Auto classes.

    The same call loads the tiny offline model and `Qwen/Qwen2.5-VL-3B-Instruct`; nothing here knows
    which one it is, which is the point of building the tiny model as a real checkpoint.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root = check_checkpoint_dir(path)
    processor = AutoProcessor.from_pretrained(root)
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForImageTextToText.from_pretrained(root, **kwargs)
    if device is not None:
        model = model.to(device)
    return processor, model.eval()


def save_vlm(model: Any, processor: Any, path: str | Path) -> None:
    """Write a checkpoint the way the hub lays one out: safetensors weights, the processor, and the image
    processor's standalone file too (tools that read the image processor alone look for it)."""
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    processor.image_processor.save_pretrained(path)


def apply_umask(root: str | Path) -> None:
    """mkdtemp makes 0700 dirs (and safetensors 0600 files); a shared output must be readable like any
    other checkpoint, so give the directory and its files the permissions the umask allows."""
    mask = os.umask(0)
    os.umask(mask)
    root = Path(root)
    root.chmod(0o777 & ~mask)
    for f in root.iterdir():
        f.chmod(0o666 & ~mask)
