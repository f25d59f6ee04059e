"""The QI-Safe-10K curation pipeline: pool, decontaminate, QI-score, select, and write a manifest.

    python -m saferl.data curate --config data/QI-Safe-10K/curate.yaml [key=value ...]

Each stage writes its output under `output_dir` as it finishes (`pool.parquet`,
`decontamination.json`, `qi_scores.jsonl`, `train.parquet` / `val.parquet`, `manifest.json`);
scoring, the only expensive stage, is cached per candidate and resumes where a killed run stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from saferl.resources import data_file

from .decontam import BenchmarkIndex, decontaminate
from .qi import QIBox, score_candidates, select_qi
from .schema import rows_to_table

DEFAULT_CONFIG = data_file("QI-Safe-10K", "curate.yaml")


class CurationError(ValueError):
    """A curation input or config is unusable; the message names the key or file."""


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: list[str] | None = None) -> DictConfig:
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(overrides or []))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise CurationError(f"{path}: set {', '.join(missing)} (in the file or as key=value overrides)")
    return cfg


def _read_rows(adapter: str, location: str, limit: int | None = None) -> list[dict]:
    """Rows from a source adapter, or from parquet already in the QI-Safe-10K schema (`qi_safe`)."""
    if adapter == "qi_safe":
        from .validate import read_rows

        rows = read_rows(location)
        return rows[:limit] if limit else rows
    from .sources import load_source

    return list(load_source(adapter, location, split="train", limit=limit))


def build_pool(sources: list[Any]) -> tuple[list[dict], dict[str, int]]:
    pool: list[dict] = []
    counts: dict[str, int] = {}
    seen: dict[str, str] = {}
    for source in sources:
        rows = _read_rows(source.adapter, source.location, source.get("limit"))
        for row in rows:
            if row["id"] in seen:
                raise CurationError(
                    f"duplicate id {row['id']!r} in {source.location} (also in {seen[row['id']]})"
                )
            seen[row["id"]] = source.location
        counts[source.adapter] = counts.get(source.adapter, 0) + len(rows)
        pool.extend(rows)
    return pool, counts


def _unit_hash(text: str) -> float:
    """A stable pseudo-random number in [0, 1) from a string (tie-breaks and split assignment)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def assign_splits(rows: list[dict], val_fraction: float) -> None:
    """Per (category, label), the rows with the smallest id hashes go to val: reproducible, stratified."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["category"], row["safety_label"]), []).append(row)
    for group in groups.values():
        group.sort(key=lambda r: _unit_hash(r["id"]))
        n_val = math.floor(len(group) * val_fraction + 0.5)
        for i, row in enumerate(group):
            row["split"] = "val" if i < n_val else "train"


def _instantiate(node: Any) -> Any:
    from hydra.utils import instantiate

    if node is None or "_target_" not in node:
        raise CurationError(f"scoring sampler/judge needs a _target_ (got {node})")
    return instantiate(node)


def run_curation(cfg: DictConfig, progress: bool = True) -> dict:
    started = time.time()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    pool, source_counts = build_pool(list(cfg.sources))
    pq.write_table(rows_to_table(pool), out / "pool.parquet")

    index = BenchmarkIndex(perceptual=bool(cfg.decontamination.perceptual))
    for bench in cfg.decontamination.benchmarks:
        index.add(bench.name, _read_rows(bench.adapter, bench.location))
    candidates, report = decontaminate(pool, index)
    (out / "decontamination.json").write_text(
        json.dumps({**report.counts(), "removed_rows": report.removed}, indent=2) + "\n"
    )

    scoring = cfg.scoring
    sampler, judge = _instantiate(scoring.sampler), _instantiate(scoring.judge)
    bar = _progress_bar(len(candidates), "QI scoring") if progress else None
    records = score_candidates(
        candidates,
        sampler,
        judge,
        out / "qi_scores.jsonl",
        k=int(scoring.k),
        batch_size=int(scoring.batch_size),
        spread=str(scoring.spread),
        progress=bar.update if bar else None,
    )
    if bar:
        bar.close()

    sel = cfg.selection
    box = QIBox(float(sel.quality_min), float(sel.quality_max), float(sel.instability_min))
    quality = np.array([records[r["id"]].quality for r in candidates])
    instability = np.array([records[r["id"]].instability for r in candidates])
    strata = np.array([f"{r['category']}|{r['safety_label']}" for r in candidates])
    tiebreak = np.array([_unit_hash(r["id"]) for r in candidates])
    chosen = select_qi(quality, instability, strata, box, int(sel.target_size), tiebreak)
    selected = [dict(candidates[i]) for i in chosen]
    assign_splits(selected, float(sel.val_fraction))
    for split in ("train", "val"):
        pq.write_table(rows_to_table([r for r in selected if r["split"] == split]), out / f"{split}.parquet")

    manifest = {
        "created_unix": int(started),
        "seconds": round(time.time() - started, 1),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "sampler": sampler.name,
        "judge": judge.name,
        "counts": {
            "pool": len(pool),
            "pool_by_source": source_counts,
            "after_decontamination": len(candidates),
            "in_qi_box": int(box.mask(quality, instability).sum()),
            "selected": len(selected),
            "target": int(sel.target_size),
            "shortfall": max(0, int(sel.target_size) - len(selected)),
        },
        "decontamination": report.counts(),
        "selected_by_source": dict(Counter(r["source"] for r in selected)),
        "selected_by_category": dict(sorted(Counter(r["category"] for r in selected).items())),
        "selected_by_label": dict(Counter(r["safety_label"] for r in selected)),
        "selected_by_split": dict(Counter(r["split"] for r in selected)),
        "thresholds": {
            "quality_min": box.quality_min,
            "quality_max": box.quality_max,
            "instability_min": box.instability_min,
            "spread": str(scoring.spread),
            "k": int(scoring.k),
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample")
