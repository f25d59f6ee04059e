"""Benchmark the data layer's two hot paths (`saferl.data`): its table, then one JSON line.

    python -m benchmarks.data_pipeline [--candidates 159000] [--rows 10000] [--side 512] [--quick]

- QI selection over N scored candidates (target 10,000 over 40 strata). Target: <= 10 s.
- Validation of R rows with side x side JPEG images (written first, not timed). Target: <= 60 s.

`--quick`: 1,000 rows to validate instead of 10,000 (the validation target is for the full size).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import Row, emit, target

SELECTION_TARGET_S = 10
VALIDATION_TARGET_S = 60
ROWS, QUICK_ROWS = 10_000, 1_000  # --quick validates fewer rows; selection is cheap at full size


def bench_selection(n: int, seed: int = 0) -> dict:
    from saferl.data.qi import QIBox, select_qi

    rng = np.random.default_rng(seed)
    quality, instability = rng.random(n), rng.random(n) * 0.5
    strata = np.array(
        [
            f"c{c}|{'safe' if s else 'unsafe'}"
            for c, s in zip(rng.integers(0, 20, n), rng.integers(0, 2, n), strict=True)
        ]
    )
    tiebreak = rng.random(n)
    start = time.perf_counter()
    chosen = select_qi(quality, instability, strata, QIBox(), target=10_000, tiebreak=tiebreak)
    seconds = time.perf_counter() - start
    return {
        "candidates": n,
        "selected": len(chosen),
        "seconds": round(seconds, 3),
        "target_s": SELECTION_TARGET_S,
        "met": seconds <= SELECTION_TARGET_S,
    }


def _write_rows(path: Path, rows: int, side: int, seed: int = 0) -> None:
    import pyarrow.parquet as pq
    from PIL import Image

    from saferl.data.schema import rows_to_table

    rng = np.random.default_rng(seed)
    # A handful of distinct photos-like noise images, re-used: encoding is not what is measured.
    images = []
    for _ in range(16):
        buf = io.BytesIO()
        pixels = (rng.random((side, side, 3)) * 64 + rng.integers(0, 192, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
    table = rows_to_table(
        [
            {
                "id": f"bench:{i}",
                "image": images[i % len(images)],
                "question": f"question {i}",
                "safety_label": "unsafe" if i % 2 else "safe",
                "category": "privacy",
                "source": "bench",
                "split": "train",
            }
            for i in range(rows)
        ]
    )
    pq.write_table(table, path)


def bench_validation(rows: int, side: int, threads: int) -> dict:
    from saferl.data.validate import validate

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.parquet"
        _write_rows(path, rows, side)
        size_mb = path.stat().st_size / 1e6
        start = time.perf_counter()
        report = validate(path, threads=threads)
        seconds = time.perf_counter() - start
    return {
        "rows": rows,
        "image": f"{side}x{side} JPEG",
        "file_mb": round(size_mb, 1),
        "threads": threads,
        "bad": len(report.problems),
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "target_s": VALIDATION_TARGET_S,
        "met": seconds <= VALIDATION_TARGET_S,
    }


def headline(figures: dict[str, Any]) -> list[Row]:
    sel, val = figures["selection"], figures["validation"]
    return [
        (
            f"selection of {sel['selected']} over {sel['candidates']} (s)",
            sel["seconds"],
            target(sel["seconds"], "<=", sel["target_s"], " s"),
        ),
        (
            f"validation of {val['rows']} rows, {val['image']} (s)",
            val["seconds"],
            target(val["seconds"], "<=", val["target_s"], " s"),
        ),
        ("validation rows/s", val["rows_per_s"], ""),
        ("validation bad rows", val["bad"], target(val["bad"], "==", 0)),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.data_pipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--candidates", type=int, default=159_000)
    parser.add_argument("--rows", type=int, help=f"default {ROWS:,} ({QUICK_ROWS:,} with --quick)")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--quick", action="store_true", help="fewer rows to validate (unless --rows is given)"
    )
    args = parser.parse_args(argv)
    rows = args.rows or (QUICK_ROWS if args.quick else ROWS)
    report = {
        "cores": os.cpu_count(),
        "quick": args.quick,
        "selection": bench_selection(args.candidates),
        "validation": bench_validation(rows, args.side, args.threads),
    }
    return emit("data_pipeline", report, headline(report))


if __name__ == "__main__":
    main()
