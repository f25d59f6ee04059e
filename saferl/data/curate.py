"""The QI-Safe-10K curation pipeline: pool, decontaminate, QI-score, select, and write a manifest.

    python -m saferl.data curate --config data/QI-Safe-10K/curate.yaml [key=value ...]

Each stage writes its output under `output_dir` as it finishes (`pool.parquet`,
`decontamination.json`, `qi_scores.jsonl`, `train.parquet` / `val.parquet`, `manifest.json`);
scoring, the only expensive stage, is cached per candidate and resumes where a killed run stopped.

Decontamination reads every benchmark through the evaluation's own registry
(`saferl.data.benchmarks.load_benchmark`), so the rows removed are exactly the rows the trained model
will later be evaluated on, for all of its benchmarks, not what a training-source adapter makes of
a benchmark's files. The layering is one way: curation imports the benchmark adapters, never the
reverse.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from saferl.data.benchmarks import BENCHMARKS, get_benchmark, load_benchmark
from saferl.resources import data_file

from .decontam import BenchmarkIndex, decontaminate
from .qi import QIBox, score_candidates, select_qi
from .schema import rows_to_table
from .sources import load_source
from .validate import read_rows

DEFAULT_CONFIG = data_file("QI-Safe-10K", "curate.yaml")


class CurationError(ValueError):
    """A curation input or config is unusable; the message names the key or file."""


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: list[str] | None = None) -> DictConfig:
    """The recipe at `path` with `key=value` overrides applied one by one (values parsed as a dotlist
    parses them), so a key inside a list entry can be set too:
    `decontamination.benchmarks[6].location=/data/SIUO/data` (a dotlist merge cannot index a list)."""
    cfg = OmegaConf.load(path)
    for override in overrides or []:
        key, sep, _ = override.partition("=")
        if not sep or not key:
            raise CurationError(f"override {override!r}: expected key=value")
        value = OmegaConf.from_dotlist([f"value={override[len(key) + 1 :]}"])["value"]
        OmegaConf.update(cfg, key, value, merge=True)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise CurationError(f"{path}: set {', '.join(missing)} (in the file or as key=value overrides)")
    return cfg


@dataclass(frozen=True)
class BenchmarkEntry:
    """One `decontamination.benchmarks` entry, checked: a registry name, where its published files are
    (None: the adapter's default), and the adapter's options (e.g. mm_safetybench's `variant`)."""

    benchmark: str
    location: str | None
    options: dict[str, Any]


ENTRY_KEYS = ("benchmark", "location", "options")


def benchmark_entries(entries: Any) -> list[BenchmarkEntry]:
    """`decontamination.benchmarks`, checked before anything is read, so a typo fails in a second
    rather than after the pool is built; each problem names the entry by its index."""
    if entries is None or isinstance(entries, (str, bytes)) or not hasattr(entries, "__iter__"):
        raise CurationError(f"decontamination.benchmarks: expected a list of entries, got {entries!r}")
    checked = []
    for i, entry in enumerate(entries):
        where = f"decontamination.benchmarks[{i}]"
        entry = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else entry
        if not isinstance(entry, dict) or "benchmark" not in entry:
            raise CurationError(
                f"{where}: expected {{benchmark: NAME, location: PATH|null, options: {{}}}}, got {entry!r}"
            )
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise CurationError(f"{where}: unknown keys {unknown} (an entry has {', '.join(ENTRY_KEYS)})")
        name = entry["benchmark"]
        if name not in BENCHMARKS:
            raise CurationError(
                f"{where}: unknown benchmark {name!r}; valid benchmarks: {', '.join(sorted(BENCHMARKS))}"
            )
        location = entry.get("location")
        adapter = get_benchmark(name)
        if location is None and adapter.default_location is None and adapter.hub_id is None:
            raise CurationError(
                f"{where}: benchmark {name!r} has no default location (no hub dataset, none shipped): "
                "set its location to a local copy of its published files"
            )
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise CurationError(f"{where}: options must be a mapping of the {name} adapter's options")
        checked.append(BenchmarkEntry(name, None if location is None else str(location), options))
    return checked


def index_benchmarks(entries: list[BenchmarkEntry], perceptual: bool) -> BenchmarkIndex:
    """Every entry's rows, read by the evaluation's adapter, indexed under the benchmark's name (two
    entries of one benchmark, e.g. two mm_safetybench variants, index under the same name)."""
    index = BenchmarkIndex(perceptual=perceptual)
    for i, entry in enumerate(entries):
        try:
            rows = load_benchmark(entry.benchmark, entry.location, **entry.options)
        except (ValueError, TypeError) as error:  # a format error names the file; add which entry it was
            raise CurationError(f"decontamination.benchmarks[{i}] ({entry.benchmark}): {error}") from error
        index.add(entry.benchmark, rows)
    return index


def _read_rows(adapter: str, location: str, limit: int | None = None) -> list[dict]:
    """Rows from a source adapter, or from parquet already in the QI-Safe-10K schema (`qi_safe`)."""
    if adapter == "qi_safe":
        rows = read_rows(location)
        return rows[:limit] if limit else rows

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

    entries = benchmark_entries(cfg.decontamination.benchmarks)
    pool, source_counts = build_pool(list(cfg.sources))
    pq.write_table(rows_to_table(pool), out / "pool.parquet")

    index = index_benchmarks(entries, perceptual=bool(cfg.decontamination.perceptual))
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
        # Which training run's reward scored the data (experiment, rubric version, judge kind), where
        # the judge can say; a judge object without `provenance` is recorded by its name only.
        "scored_by": getattr(judge, "provenance", {"judge": judge.name}),
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
