"""Validate QI-Safe-10K parquet files row by row, and split them into clean rows and rejects.

A bad row found here costs a line of output; the same row found mid-training costs a crashed job or,
worse, a silently skewed reward (an unknown category, a label typo). So every row is checked, every
problem is reported by the row's id (or its row number when the id itself is bad), and `--write-clean`
keeps the rejects with their reasons: nothing is dropped silently.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from saferl.policies import category_ids

from .schema import LABELS, REQUIRED_COLUMNS, SPLITS, image_bytes

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on image size. Below 28 px a side Qwen2-VL's processor cannot form one merged patch;
    above the maximum an image costs more GPU memory than it can be worth (and is likely an error)."""

    min_side: int = 28
    max_side: int = 4096
    max_bytes: int = 20_000_000


@dataclass
class RowProblem:
    file: str
    row: int
    id: str | None
    reasons: list[str]

    @property
    def where(self) -> str:
        return f"id {self.id!r}" if self.id is not None else f"row {self.row}"

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {'; '.join(self.reasons)}"


@dataclass
class ValidationReport:
    files: list[str] = field(default_factory=list)
    rows: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    file_problems: list[str] = field(default_factory=list)  # a file that cannot be read as parquet

    @property
    def ok(self) -> bool:
        return not self.problems and not self.file_problems

    def lines(self, limit: int | None = None) -> list[str]:
        """The problems, files first, one per line (at most `limit` rows of them, then a count)."""
        rows = [str(p) for p in self.problems]
        if limit is not None and len(rows) > limit:
            rows = [*rows[:limit], f"... and {len(rows) - limit} more bad rows"]
        return [*self.file_problems, *rows]

    def reason_counts(self) -> Counter:
        # Count the kind of each reason, not its detail ("undecodable image: ..." -> "undecodable image").
        return Counter(r.split(":")[0].split(" (")[0] for p in self.problems for r in p.reasons)

    def summary(self) -> str:
        head = f"validated {self.rows} rows in {len(self.files)} file(s): "
        if self.ok:
            return head + "all good"
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.reason_counts().most_common())
        bad = [f"{len(self.file_problems)} unreadable file(s)"] if self.file_problems else []
        if self.problems:
            bad.append(f"{len(self.problems)} bad ({kinds})")
        return head + "; ".join(bad)


def parquet_files(path: str | Path) -> list[Path]:
    """A parquet file, or every parquet file under a directory (sorted, so reports are stable)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise FileNotFoundError(f"no parquet files under {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return [path]


class DataError(ValueError):
    """Data that must not be trained on; the message is the validator's report."""


def read_table(file: Path) -> pa.Table:
    """A parquet file, or `DataError` naming it (a truncated or non-parquet file)."""
    try:
        return pq.read_table(file)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{file}: not a readable parquet file ({type(err).__name__}: {err})") from None


def read_rows(path: str | Path) -> list[dict]:
    """Every row of every parquet file at `path` (a file or a directory), in `parquet_files` order, with
    each Hugging Face image struct replaced by its bytes (the one image form past this point)."""
    rows = []
    for file in parquet_files(path):
        for row in read_table(file).to_pylist():
            data = image_bytes(row.get("image"))
            rows.append({**row, "image": data} if data is not None else row)
    return rows


def check_image(data: bytes | None, limits: ImageLimits) -> str | None:
    """The reason an encoded image is unusable, or None. Decodes fully: a truncated JPEG opens fine and
    fails only when its pixels are read."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "missing image"
    if len(data) > limits.max_bytes:
        return f"image too large ({len(data)} bytes > {limits.max_bytes})"
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in IMAGE_FORMATS:
                return f"undecodable image: unsupported format {img.format}"
            width, height = img.size
            if min(width, height) < limits.min_side:
                return f"image too small ({width}x{height}, min side {limits.min_side})"
            if max(width, height) > limits.max_side:
                return f"image too large ({width}x{height}, max side {limits.max_side})"
            img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        return f"undecodable image: {err}"
    return None


def image_problem(value: object, limits: ImageLimits) -> str | None:
    """The reason an `image` cell is unusable, or None: encoded bytes or a Hugging Face Image struct
    `{bytes, path}` are checked by `check_image`; a path, text or anything else is named as such."""
    data = image_bytes(value)
    if data is not None or value is None:
        return check_image(data, limits)
    if isinstance(value, dict):
        path = value.get("path")
        if path:
            return f"image struct holds a path ({str(path)[:80]!r}) but no bytes: embed the image bytes"
        return "missing image"
    if isinstance(value, str):
        return f"image is a string ({value[:40]!r}), expected encoded image bytes or an image struct {{bytes, path}}"
    return (
        f"image is a {type(value).__name__}, expected encoded image bytes or an image struct {{bytes, path}}"
    )


def objects_reason(value: object) -> str | None:
    """The reason an `image_objects` cell does not have the schema's shape (null, or a list of
    `{name, attributes, text}`), or None; the rule judge reads these to check claims about the image."""
    if value is None:
        return None
    if not isinstance(value, list):
        return f"image_objects is a {type(value).__name__}, expected a list of {{name, attributes, text}}"
    for i, obj in enumerate(value):
        if not isinstance(obj, dict) or not _text(obj.get("name")):
            return f"image_objects[{i}] has no name"
        attributes = obj.get("attributes")
        if attributes is not None and not (
            isinstance(attributes, list) and all(isinstance(a, str) for a in attributes)
        ):
            return f"image_objects[{i}].attributes is not a list of strings"
        if obj.get("text") is not None and not isinstance(obj["text"], str):
            return f"image_objects[{i}].text is not a string"
    return None


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def row_reasons(row: dict, categories: frozenset[str], absent: frozenset[str] = frozenset()) -> list[str]:
    """Every problem of one row's fields other than the image and the id. Columns in `absent` are
    missing from the file: reported once as such by the caller, not again as empty values."""
    checks = {
        "question": lambda v: None if _text(v) else "empty question",
        "safety_label": lambda v: (
            None if v in LABELS else f"unknown label {v!r} (expected one of {', '.join(LABELS)})"
        ),
        "category": lambda v: None if v in categories else f"unknown category {v!r}",
        "split": lambda v: (
            None if v in SPLITS else f"unknown split {v!r} (expected one of {', '.join(SPLITS)})"
        ),
        "source": lambda v: None if _text(v) else "empty source",
        "image_objects": objects_reason,
        "reference": lambda v: (
            None if v is None or isinstance(v, str) else f"reference is a {type(v).__name__}"
        ),
    }
    reasons = (check(row.get(column)) for column, check in checks.items() if column not in absent)
    return [r for r in reasons if r]


def validate_batch(
    rows: list[dict],
    first_row: int,
    missing: list[str],
    file: str,
    categories: frozenset[str],
    limits: ImageLimits,
    seen_ids: dict[str, str],
    pool: ThreadPoolExecutor,
) -> tuple[list[RowProblem], list[bool]]:
    """Problems of one batch of rows, and a per-row good/bad mask. `seen_ids` spans files."""
    problems: list[RowProblem] = []
    good: list[bool] = []
    images = [None if "image" in missing else row.get("image") for row in rows]
    # Pillow releases the GIL while decoding, so threads decode images in parallel.
    image_reasons = list(pool.map(lambda value: image_problem(value, limits), images))
    for offset, (row, image_reason) in enumerate(zip(rows, image_reasons, strict=True)):
        row_number = first_row + offset
        reasons = [f"missing column {c!r}" for c in missing]
        row_id = row.get("id")
        valid_id = isinstance(row_id, str) and bool(row_id.strip())
        if not valid_id and "id" not in missing:
            reasons.append(f"bad id {row_id!r}")
        elif valid_id and row_id in seen_ids:
            reasons.append(f"duplicate id (first at {seen_ids[row_id]})")
        elif valid_id:
            seen_ids[row_id] = f"{file} row {row_number}"
        reasons += row_reasons(row, categories, frozenset(missing))
        if image_reason and "image" not in missing:
            reasons.append(image_reason)
        if reasons:
            problems.append(RowProblem(file, row_number, row_id if valid_id else None, reasons))
        good.append(not reasons)
    return problems, good


def validate(
    path: str | Path,
    categories: Iterable[str] | None = None,
    limits: ImageLimits | None = None,
    write_clean: str | Path | None = None,
    threads: int = 2,
    batch_size: int = 256,
) -> ValidationReport:
    """Validate every parquet file at `path`; with `write_clean`, write `<stem>.parquet` (good rows) and
    `<stem>.rejects.parquet` (bad rows, all their columns, plus `reject_row` and `reject_reasons`)."""
    if categories is None:
        categories = category_ids()
    categories = frozenset(categories)
    limits = limits or ImageLimits()
    report = ValidationReport()
    seen_ids: dict[str, str] = {}
    out = Path(write_clean) if write_clean is not None else None
    if out is not None:
        stems = Counter(f.stem for f in parquet_files(path))
        clash = sorted(stem for stem, n in stems.items() if n > 1)
        if clash:  # the clean copies are named by stem: two would overwrite each other
            raise ValueError(
                f"{path}: several files named {clash[0]}.parquet; --write-clean needs distinct names"
            )
        out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for file in parquet_files(path):
            report.files.append(str(file))
            try:
                with _Split(out, file) as split:
                    parquet = pq.ParquetFile(file)
                    missing = [c for c in REQUIRED_COLUMNS if c not in parquet.schema_arrow.names]
                    # Streamed in record batches: a 10K-row file of 512px images is over a gigabyte.
                    for batch in parquet.iter_batches(batch_size=batch_size):
                        problems, good = validate_batch(
                            batch.to_pylist(),
                            report.rows,
                            missing,
                            str(file),
                            categories,
                            limits,
                            seen_ids,
                            pool,
                        )
                        report.rows += batch.num_rows
                        report.problems.extend(problems)
                        split.write(batch, good, problems)
            except (pa.ArrowException, OSError) as err:  # truncated, not parquet, unreadable
                report.file_problems.append(
                    f"{file}: not a readable parquet file ({type(err).__name__}: {err})"
                )
    return report


class _Split:
    """Writes a file's good rows and its rejects (with reasons) as batches are validated."""

    def __init__(self, out: Path | None, file: Path) -> None:
        self.out, self.file = out, file
        self.clean: pq.ParquetWriter | None = None
        self.rejects: pq.ParquetWriter | None = None
        self.log = None

    def __enter__(self) -> _Split:
        if self.out is not None:
            self.log = (self.out / f"{self.file.stem}.rejects.jsonl").open("w")
        return self

    def write(self, batch: pa.RecordBatch, good: list[bool], problems: list[RowProblem]) -> None:
        if self.out is None:
            return
        table = pa.Table.from_batches([batch])
        mask = pa.array(good, type=pa.bool_())
        if self.clean is None:
            self.clean = pq.ParquetWriter(self.out / f"{self.file.stem}.parquet", table.schema)
        self.clean.write_table(table.filter(mask))
        rejects = table.filter(pc.invert(mask))
        rejects = rejects.append_column("reject_row", pa.array([p.row for p in problems], type=pa.int64()))
        rejects = rejects.append_column(
            "reject_reasons", pa.array([p.reasons for p in problems], type=pa.list_(pa.string()))
        )
        if self.rejects is None:
            self.rejects = pq.ParquetWriter(self.out / f"{self.file.stem}.rejects.parquet", rejects.schema)
        self.rejects.write_table(rejects)
        for p in problems:
            self.log.write(
                json.dumps({"file": p.file, "row": p.row, "id": p.id, "reasons": p.reasons}) + "\n"
            )

    def __exit__(self, *exc: object) -> None:
        for writer in (self.clean, self.rejects, self.log):
            if writer is not None:
                writer.close()
