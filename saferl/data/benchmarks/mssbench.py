"""MSSBench, Multimodal Situational Safety (Zhou et al., ICLR 2025, arXiv:2410.06172): one query or
instruction, asked once in a safe situation and once in an unsafe one shown by the image.

Published layout, read unchanged (hub dataset repository `kzhou35/mssbench`, raw files; fields as in
github.com/eric-ai-lab/MSSBench README.md and utils/infer_on_data.py, which joins the image paths onto
`<root>/chat/` and `<root>/embodied/`):

    combined.json   {"chat": [{"safe_image_path", "unsafe_image_path", "intent", "unsafe_image",
                               "Type", "queries": [...]}, ...],
                     "embodied": [{"task", "category", "safe_instruction", "unsafe_instruction",
                                   "safe_instructions": [...], "unsafe_instructions": [...],
                                   "safe", "unsafe", "observation_safe", "observation_unsafe"}, ...]}
    chat/<image>, embodied/<image>

`location` is the folder holding `combined.json` (or the file itself), or the hub id, fetched with
`huggingface_hub` (from the local HF cache when offline). `task` picks `chat`, `embodied` or both
(default).

Rows follow the benchmark's own default setting (instruction following, `setting='if'` in
infer_on_data.py), without its prompt prefix, which is the evaluated model's business:

- chat: every query in `queries` is asked with the safe image and with the unsafe image;
- embodied: the i-th pair of `safe_instructions` / `unsafe_instructions` is asked with the safe and
  the unsafe image respectively (paired with `zip`, as the official code does).

Labels are the situation's: the safe image gives `safe`, the unsafe image `unsafe`; ids end in
`/safe` and `/unsafe` (`chat/<entry>/q<query>/safe`, `embodied/<entry>/i<pair>/unsafe`, entries
numbered by their position in the file, so ids are stable for one version of the file; the hub repo
has been revised once, "data v1.1"). `benchmark_category` is the entry's published category (`Type` in
chat, `category` in embodied). Their values could not be checked against the file itself: third-party
loaders name `property`, `harmful` and `offensive`, the paper names four domains (physical harm, property
damage, illegal activities, offensive behaviour); data/QI-Safe-10K/source_categories.yaml covers both spellings
and anything else takes the fallback category. No reference answers are published.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saferl.data.benchmarks import BenchmarkAdapter, BenchmarkFormatError
from saferl.data.benchmarks._files import (
    Item,
    benchmark_row,
    check_option,
    expect,
    hub_snapshot,
    image_file,
    is_hub_id,
    local_path,
    read_json,
    texts,
)
from saferl.data.sources import map_category

NAME = "mssbench"
HUB_ID = "kzhou35/mssbench"
TASKS = ("chat", "embodied")
LABELS = ("safe", "unsafe")
HOW = f"hf download {HUB_ID} --repo-type dataset --local-dir DIR"


def load(location: str | Path, *, task: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows of the chat entries, then of the embodied ones (or of `task` alone)."""
    check_option("task", task, (None, *TASKS))
    root = hub_snapshot(str(location)) if is_hub_id(location) else local_path(location, NAME, HOW)
    file = root if root.is_file() else root / "combined.json"
    if not file.is_file():
        raise BenchmarkFormatError(f"{file}: not found (the benchmark's combined.json)")
    data = expect(read_json(file), dict, file, "the file")
    return _rows(file, data, (task,) if task else TASKS)


def _rows(file: Path, data: dict[str, Any], tasks: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for task in tasks:
        entries = expect(data.get(task), list, file, f"key {task!r}")
        to_rows = _chat_rows if task == "chat" else _embodied_rows
        for index, entry in enumerate(entries):
            item = Item(str(file), f"{task}[{index}]", index, expect(entry, dict, file, f"{task}[{index}]"))
            yield from to_rows(item, file.parent / task)


def _images(item: Item, folder: Path, fields: tuple[str, str]) -> dict[str, bytes]:
    """label -> image bytes for the entry's safe and unsafe situation."""
    return {
        label: image_file(item, field, [folder / item.text(field)])
        for label, field in zip(LABELS, fields, strict=True)
    }


def _chat_rows(item: Item, folder: Path) -> Iterator[dict[str, Any]]:
    queries = texts(item, "queries")
    kind = item.text("Type")
    images = _images(item, folder, ("safe_image_path", "unsafe_image_path"))
    for number, query in enumerate(queries):
        for label in LABELS:
            yield _row(f"chat/{item.index}/q{number}/{label}", images[label], query, label, kind)


def _embodied_rows(item: Item, folder: Path) -> Iterator[dict[str, Any]]:
    pairs = list(zip(texts(item, "safe_instructions"), texts(item, "unsafe_instructions"), strict=False))
    kind = item.text("category")
    images = _images(item, folder, ("safe", "unsafe"))
    for number, pair in enumerate(pairs):
        for label, instruction in zip(LABELS, pair, strict=True):
            yield _row(f"embodied/{item.index}/i{number}/{label}", images[label], instruction, label, kind)


def _row(key: str, image: bytes, question: str, label: str, kind: str) -> dict[str, Any]:
    return benchmark_row(
        NAME,
        key,
        image=image,
        question=question,
        label=label,
        category=map_category(NAME, kind),
        benchmark_category=kind,
    )


ADAPTER = BenchmarkAdapter(
    name=NAME,
    hub_id=HUB_ID,
    description="MSSBench: the same chat query / embodied instruction in a safe and an unsafe visual "
    "situation; safe and unsafe rows in pairs",
    load=load,
)
