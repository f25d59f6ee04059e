"""BeaverTails-V's evaluation split: harmful image+question pairs over 20 harm categories, all unsafe.

BeaverTails-V (`PKU-Alignment/BeaverTails-V`) publishes one config per harm category, each with a
`train` and an `evaluation` split (`data/<category>/evaluation.parquet`; same columns as `train`:
`question`, `image`, `category`, `image_severity`, `response`, `is_response_safe`). The rows are read by
the training-source adapter (`saferl.data.sources`, so ids, labels, categories and references are the
ones training sees, which is what decontamination compares against); this module only picks the
evaluation files: a local copy holds the train split beside it, and a benchmark that silently read
train rows would report on training data.

`location`: a local copy (the repository or any folder under it: every `evaluation.parquet` below it is
read, `train` files are skipped), one parquet file (read as given), or the hub id (every config's
`evaluation` split). `benchmark_category` is the published `category` column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from saferl.data.benchmarks import BenchmarkAdapter, BenchmarkFormatError
from saferl.data.sources import Record, load_source_records

NAME = "beavertails_v"
HUB_ID = "PKU-Alignment/BeaverTails-V"
HUB_SPLIT = "evaluation"
# `evaluation.parquet`, or hub-style shards `evaluation-00000-of-00001.parquet`.
_EVALUATION_FILE = re.compile(rf"^{HUB_SPLIT}(-.*)?\.parquet$")


def evaluation_files(path: Path) -> list[Path]:
    """Every evaluation-split parquet file under a local copy, sorted so ids and order are stable."""
    files = sorted(file for file in path.rglob("*.parquet") if _EVALUATION_FILE.match(file.name))
    if not files:
        raise BenchmarkFormatError(f"{path}: no {HUB_SPLIT}.parquet file under it (data/<category>/...)")
    return files


def _rows(location: str | Path) -> Iterator[tuple[Record, dict[str, Any]]]:
    path = Path(location)
    if path.is_dir():
        for file in evaluation_files(path):
            yield from load_source_records(NAME, file, split="val")
    else:  # a file, a hub id, or nothing (the source adapter names what is missing)
        yield from load_source_records(NAME, location, split="val", hub_split=HUB_SPLIT)


def load(location: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of BeaverTails-V's evaluation split at `location` (a local copy, a parquet file or the hub id)."""
    for record, row in _rows(location):
        row["benchmark_category"] = record.text("category")
        yield row


ADAPTER = BenchmarkAdapter(
    name=NAME,
    hub_id=HUB_ID,
    description="BeaverTails-V evaluation split: harmful image+question pairs in 20 harm categories "
    "(all unsafe); reference = the published response where it is marked safe",
    load=load,
)
