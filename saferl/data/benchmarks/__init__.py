"""Benchmark adapters: each reads one published safety benchmark into QI-Safe-10K-shaped rows.

Every adapter reads the benchmark's *published* layout unchanged (a local path, or a dataset id when
the hub is reachable) and yields rows of `saferl.data.schema` plus one key, `benchmark_category` (the
benchmark's own category name, as published), so generation and judging never need to know where a
row came from, and results can be broken down by the benchmark's taxonomy as well as by policy
category. A row's `id` is stable across runs and unique within its benchmark: the result caches are
keyed by it.

Modules are imported only when their benchmark is asked for (`BENCHMARKS` names them), so one
adapter's optional dependency never breaks another's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saferl.data.sources import SourceFormatError

# name -> module defining `ADAPTER`.
BENCHMARKS: dict[str, str] = {
    "qi_safe_val": "saferl.data.benchmarks.qi_safe",
    "beavertails_v": "saferl.data.benchmarks.beavertails_v",
    "mm_safetybench": "saferl.data.benchmarks.mm_safetybench",
    "spa_vl": "saferl.data.benchmarks.spa_vl",
    "siuo": "saferl.data.benchmarks.siuo",
    "mssbench": "saferl.data.benchmarks.mssbench",
    "vlguard": "saferl.data.benchmarks.vlguard",
    "mmsafeaware": "saferl.data.benchmarks.mmsafeaware",
}


class BenchmarkFormatError(SourceFormatError):
    """A benchmark file that does not have the published format (names the file, row and field)."""


@dataclass(frozen=True)
class BenchmarkAdapter:
    name: str  # the registry key; also every row's `source`
    hub_id: str | None  # the published dataset id read when no local path is given
    description: str  # one line: what it tests and which labels it carries
    # (location, **options) -> rows; `location` a local path in the published layout or a dataset id.
    load: Callable[..., Iterator[dict[str, Any]]]
    # A local copy read when no location is given, before `hub_id`: for a set that has no published
    # id but ships with the repository (QI-Safe-10K's sample), so `hub_id` keeps meaning "published".
    default_location: str | Path | None = None


def get_benchmark(name: str) -> BenchmarkAdapter:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid benchmarks: {', '.join(sorted(BENCHMARKS))}")
    return importlib.import_module(BENCHMARKS[name]).ADAPTER


def load_benchmark(
    name: str, location: str | Path | None = None, *, limit: int | None = None, **options: Any
) -> list[dict[str, Any]]:
    """Rows of benchmark `name` from `location` (default: the adapter's `default_location`, else its
    `hub_id`), at most `limit`.

    Ids are checked unique: two rows with one id would share one cache entry and one result.
    """
    adapter = get_benchmark(name)
    source = location if location is not None else adapter.default_location
    source = source if source is not None else adapter.hub_id
    if source is None:
        raise ValueError(f"benchmark {name!r} has no default location: give a local path")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in adapter.load(source, **options):
        if limit is not None and len(rows) >= limit:
            break
        if row["id"] in seen:
            raise BenchmarkFormatError(f"{source}: duplicate id {row['id']!r} in benchmark {name!r}")
        seen.add(row["id"])
        rows.append(row)
    return rows
