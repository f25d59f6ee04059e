"""SPA-VL's test set: HarmEval (`harm`, unsafe) and HelpEval (`help`, safe), 265 items each.

`sqrti/SPA-VL` config `test` publishes two splits, `test/harm-*.parquet` and `test/help-*.parquet`,
with columns `image`, `question`, `class1` (domain), `class2` (category), `class3` (subcategory) and no
label and no reference answer: the split is the label. HarmEval measures harmlessness (the rate of
unsafe responses to harmful requests), so its items are `unsafe`; HelpEval measures helpfulness (win
rate against a reference model's answers, judged for helpfulness and harmlessness together), so its
items are requests the model is expected to answer: `safe`. HelpEval items still carry the harm
taxonomy (they are sensitive-topic questions), so both splits map their class names to a policy
category the same way, through the training-source adapter (`saferl.data.sources`).

`location`: a local copy (its `test/` folder, or that folder itself), one `harm-*` / `help-*` parquet
file, or the hub id. Option `split`: `"harm"`, `"help"` or both (default). `benchmark_category` is the
published `class2` (the 13-category level: fine enough to tell harms apart, coarse enough to hold
~20 items per category in 265).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from saferl.data.benchmarks import BenchmarkAdapter, BenchmarkFormatError
from saferl.data.sources import Record, load_source_records

NAME = "spa_vl"
HUB_ID = "sqrti/SPA-VL"
HUB_CONFIG = "test"
LABELS = {"harm": "unsafe", "help": "safe"}  # test split -> safety label
SPLITS = tuple(LABELS)
CATEGORY_FIELD = "class2"


def _splits(split: str | Iterable[str]) -> tuple[str, ...]:
    chosen = (split,) if isinstance(split, str) else tuple(split)
    unknown = [name for name in chosen if name not in LABELS]
    if unknown or not chosen:
        raise ValueError(f"split must be among {SPLITS}, got {split!r}")
    return chosen


def split_of(file: Path) -> str | None:
    """The test split a local parquet file belongs to, from its published name (`harm-00000-of-00001`)."""
    for split in SPLITS:
        if file.name == f"{split}.parquet" or file.name.startswith(f"{split}-"):
            return split
    return None


def split_files(path: Path, split: str) -> list[Path]:
    """A local copy's files of one test split: under `test/` when given the repository root."""
    folder = path / HUB_CONFIG if (path / HUB_CONFIG).is_dir() else path
    files = sorted(file for file in folder.glob("*.parquet") if split_of(file) == split)
    if not files:
        raise BenchmarkFormatError(f"{folder}: no {split}-*.parquet file (SPA-VL test split {split!r})")
    return files


def _rows(location: str | Path, splits: tuple[str, ...]) -> Iterator[tuple[str, Record, dict[str, Any]]]:
    path = Path(location)
    if path.is_dir():
        for split in splits:
            for file in split_files(path, split):
                for record, row in load_source_records(NAME, file, split="val"):
                    yield split, record, row
    elif path.is_file():
        split = split_of(path)
        if split is None:
            raise BenchmarkFormatError(f"{path}: not a SPA-VL test file (expected harm-* or help-*.parquet)")
        if split in splits:
            for record, row in load_source_records(NAME, path, split="val"):
                yield split, record, row
    else:  # a hub id (or a missing path: the source adapter says so)
        for split in splits:
            pairs = load_source_records(NAME, location, split="val", hub_config=HUB_CONFIG, hub_split=split)
            for record, row in pairs:
                yield split, record, row


def load(location: str | Path, *, split: str | Iterable[str] = SPLITS) -> Iterator[dict[str, Any]]:
    """Rows of SPA-VL's test split(s) at `location`, labelled by split (`harm` unsafe, `help` safe)."""
    splits = _splits(split)
    return _load(location, splits)


def _load(location: str | Path, splits: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for split, record, row in _rows(location, splits):
        # The source adapter labels every SPA-VL row unsafe (its training configs are all harmful);
        # in the test set the split says which kind a row is.
        row.update(safety_label=LABELS[split], benchmark_category=record.text(CATEGORY_FIELD))
        yield row


ADAPTER = BenchmarkAdapter(
    name=NAME,
    hub_id=HUB_ID,
    description="SPA-VL test set: HarmEval harmful requests (unsafe) and HelpEval sensitive-topic requests "
    "to answer helpfully (safe), 53 harm subcategories; no references",
    load=load,
)
