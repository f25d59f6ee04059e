"""What the benchmark adapters share: finding a published copy, reading its JSON and image files, and
building a row.

Kept in one place so that every adapter reports bad input the same way, as a `BenchmarkFormatError`
naming the file, the item (by its published key or position) and the field, and so that rows of every
benchmark have exactly the same keys. The row itself is `saferl.data.sources._row`, the schema's one
row builder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saferl.data.benchmarks import BenchmarkFormatError
from saferl.data.sources import HUB_ID, Record, encoded_image, schema_row

SPLIT = "val"  # benchmarks are held out: their rows are never training rows


@dataclass(frozen=True)
class Item(Record):
    """One published item. `key` says where it is in `origin` ("item '3'", "chat[2]", "line 17") and is
    what error messages name; failures are `BenchmarkFormatError`s, so the schema helpers of
    `saferl.data.sources` (`Record.text`, `encoded_image`) report through it unchanged."""

    def fail(self, name: str, problem: str = "missing or empty") -> BenchmarkFormatError:
        return BenchmarkFormatError(f"{self.origin}: {self.key}: field {name!r}: {problem}")


def local_path(location: str | Path, benchmark: str, how: str) -> Path:
    """`location` as an existing path; otherwise an error saying how the benchmark is obtained, since
    a benchmark published as loose files (GitHub, Google Drive) has no hub dataset to fall back to."""
    path = Path(location)
    if path.exists():
        return path
    kind = "a dataset id, but " if isinstance(location, str) and HUB_ID.match(location) else ""
    raise BenchmarkFormatError(
        f"{location}: no such file or directory ({kind}{benchmark} is read from a local copy of its "
        f"published files: {how})"
    )


def is_hub_id(location: str | Path) -> bool:
    return isinstance(location, str) and not Path(location).exists() and bool(HUB_ID.match(location))


def hub_snapshot(dataset_id: str) -> Path:
    """A local snapshot of a hub dataset repository of raw files (from the HF cache, or fetched).

    Any failure (offline, unknown id, no access) becomes one clear error: the caller asked for a
    benchmark, not for a download, and the fix is the same in every case."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(dataset_id, repo_type="dataset"))
    except Exception as error:
        raise BenchmarkFormatError(
            f"{dataset_id}: could not fetch the hub dataset ({type(error).__name__}: {error}); "
            "download it and give its local path instead"
        ) from error


def read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BenchmarkFormatError(f"{file}: not a readable JSON file ({error})") from error


def read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BenchmarkFormatError(f"{file}: not a readable text file ({error})") from error


def expect(value: Any, kind: type, file: Path, what: str) -> Any:
    """`value` if it has the published JSON type, else an error naming the file and what was expected."""
    if not isinstance(value, kind):
        name = {dict: "a JSON object", list: "a JSON list"}.get(kind, kind.__name__)
        raise BenchmarkFormatError(f"{file}: {what}: expected {name}, got {type(value).__name__}")
    return value


def image_file(item: Item, field: str, candidates: Sequence[Path]) -> bytes:
    """Encoded bytes of the first candidate file that exists (PNG/JPEG as they are, other formats
    re-encoded as PNG); if none does, an error naming every path looked at."""
    for file in candidates:
        if file.is_file():
            return encoded_image(file.read_bytes(), item, field)
    tried = ", ".join(str(file) for file in candidates)
    raise item.fail(field, f"image file not found: {tried}")


def texts(item: Item, field: str) -> list[str]:
    """A non-empty list of non-empty strings (a benchmark's list of questions or instructions)."""
    values = item.data.get(field)
    if not isinstance(values, list) or not values:
        raise item.fail(field, "expected a non-empty list of strings")
    for number, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise item.fail(f"{field}[{number}]")
    return values


def check_option(option: str, value: Any, valid: Iterable[Any]) -> None:
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"{option} must be one of {valid}, got {value!r}")


def benchmark_row(
    benchmark: str,
    key: str,
    *,
    image: bytes,
    question: str,
    label: str,
    category: str,
    benchmark_category: str,
    reference: str | None = None,
) -> dict[str, Any]:
    """A schema row plus `benchmark_category`; the id is `<benchmark>:<key>`."""
    row = schema_row(f"{benchmark}:{key}", image, question, label, category, reference)
    row.update(source=benchmark, split=SPLIT, benchmark_category=benchmark_category)
    return row
