"""Benchmark the data layer's two hot paths and print JSON.

    python -m saferl.data.bench [--candidates 159000] [--rows 10000] [--side 512]

- QI selection over N scored candidates (target 10,000 over 40 strata). Target: <= 10 s.
- Validation of R rows with side x side JPEG images (written first, not timed). Target: <= 60 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_selection(n: int, seed: int = 0) -> dict:
    from .qi import QIBox, select_qi

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
        "target_s": 10,
        "met": seconds <= 10,
    }


def _write_rows(path: Path, rows: int, side: int, seed: int = 0) -> None:
    import pyarrow.parquet as pq
    from PIL import Image

    from .schema import rows_to_table

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
    from .validate import validate

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
        "target_s": 60,
        "met": seconds <= 60,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saferl.data.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=159_000)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    report = {
        "cores": os.cpu_count(),
        "selection": bench_selection(args.candidates),
        "validation": bench_validation(args.rows, args.side, args.threads),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
