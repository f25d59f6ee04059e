"""QI-Safe-10K's val split as a benchmark: the held-out rows of the training set's own distribution.

The rows already have the schema, so nothing is mapped; they are checked instead, row by row, with the
project's validator (`saferl.data.validate`), because a val file is often hand-made or filtered and a
bad row found mid-evaluation costs a whole run. The first bad row fails the load, naming the file, the
row and what is wrong with which field.

`location` is a QI-Safe-10K directory (its `val.parquet`; without one, the val rows of every parquet
file under it) or one parquet file (its val rows). The curated set is not published, so there is no hub
id; with no location the repository's synthetic sample (`data/QI-Safe-10K/sample`) is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from saferl.data.benchmarks import BenchmarkAdapter, BenchmarkFormatError
from saferl.data.schema import COLUMNS, REQUIRED_COLUMNS
from saferl.data.sources import parquet_records
from saferl.data.validate import ImageLimits, parquet_files, validate_batch
from saferl.policies import category_ids
from saferl.resources import SAMPLE_DIR

NAME = "qi_safe_val"
DEFAULT_LOCATION = SAMPLE_DIR
SPLIT = "val"


def val_files(path: Path) -> list[Path]:
    """The parquet files to read: a file itself; a directory's `val.parquet`, or else every parquet
    file under it (its val rows are picked later), leaving out the validator's `*.rejects.parquet`."""
    if not path.exists():
        raise BenchmarkFormatError(f"{path}: no such file or directory")
    if path.is_file():
        return [path]
    if (path / f"{SPLIT}.parquet").is_file():
        return [path / f"{SPLIT}.parquet"]
    try:
        files = [file for file in parquet_files(path) if not file.name.endswith(".rejects.parquet")]
    except FileNotFoundError as error:
        raise BenchmarkFormatError(f"{path}: no parquet files found") from error
    if not files:
        raise BenchmarkFormatError(f"{path}: no parquet files found")
    return files


def load(location: str | Path) -> Iterator[dict[str, Any]]:
    """Validated val rows of QI-Safe-10K at `location`; `source` becomes the benchmark's name and
    `benchmark_category` is the row's own policy category."""
    files = val_files(Path(location))
    categories = frozenset(category_ids())
    limits = ImageLimits()
    seen_ids: dict[str, str] = {}
    count = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        for file in files:
            # Checks the required columns before any row is read (the file and the missing names).
            for record in parquet_records(file, REQUIRED_COLUMNS):
                data = record.data
                if data.get("split") == "train":
                    continue  # a train row: not part of this benchmark, whatever else it holds
                problems, _ = validate_batch(
                    [data], record.index, [], record.origin, categories, limits, seen_ids, pool
                )
                if problems:
                    problem = problems[0]
                    where = f"row {problem.row}" + (f" (id {problem.id!r})" if problem.id else "")
                    raise BenchmarkFormatError(f"{problem.file}: {where}: {'; '.join(problem.reasons)}")
                row = {column: data.get(column) for column in COLUMNS}
                row.update(source=NAME, split=SPLIT, benchmark_category=data["category"])
                count += 1
                yield row
    if count == 0:
        raise BenchmarkFormatError(f"{location}: no {SPLIT} rows in {', '.join(str(f) for f in files)}")


ADAPTER = BenchmarkAdapter(
    name=NAME,
    hub_id=None,
    description="QI-Safe-10K val split: held-out safe and unsafe image+question pairs over the 20 policy "
    "categories, labels and references as curated",
    load=load,
    default_location=DEFAULT_LOCATION,
)
