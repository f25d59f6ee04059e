"""Quality–instability (QI) scoring and selection: which candidates RL can learn from.

SaFeR-VLM samples K responses per candidate from the base policy and scores each with the judge.
Quality is the mean score, instability the spread. A candidate the policy always gets right (high
quality, no spread) or always gets wrong (low quality, no spread) gives GRPO a zero advantage for the
whole group; one it is unsure about (moderate quality, high spread) gives signal. Selection keeps that
QI box, stratified over category and label so no policy area or the benign side is lost.

The math is pure functions over arrays (tested directly); scoring is the only I/O, cached as jsonl and
resumable because at 159K candidates x K it is days of GPU time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

# ---------------------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------------------


def qi_stats(scores: Sequence[float], spread: str = "std") -> tuple[float, float]:
    """(quality, instability) of one candidate's K scores: mean, and population std or range."""
    if len(scores) == 0:
        raise ValueError("qi_stats needs at least one score")
    arr = np.asarray(scores, dtype=np.float64)
    if spread == "std":
        return float(arr.mean()), float(arr.std())
    if spread == "range":
        return float(arr.mean()), float(arr.max() - arr.min())
    raise ValueError(f"unknown spread {spread!r} (std or range)")


@dataclass(frozen=True)
class QIBox:
    """The kept region, in judge-score units normalised to [0, 1]."""

    quality_min: float = 0.25
    quality_max: float = 0.75
    instability_min: float = 0.15

    def __post_init__(self) -> None:
        if not 0 <= self.quality_min <= self.quality_max <= 1:
            raise ValueError(f"need 0 <= quality_min <= quality_max <= 1, got {self}")
        if self.instability_min < 0:
            raise ValueError(f"instability_min must be >= 0, got {self.instability_min}")

    def mask(self, quality: np.ndarray, instability: np.ndarray) -> np.ndarray:
        return (
            (quality >= self.quality_min)
            & (quality <= self.quality_max)
            & (instability >= self.instability_min)
        )


def allocate(available: Sequence[int], target: int) -> list[int]:
    """Split `target` over strata as evenly as their sizes allow (water-filling).

    Strata smaller than the even share give all they have; the rest is shared among the others; any
    remainder goes to the largest strata first. Never more than `available`, never more than `target`.
    """
    avail = np.asarray(available, dtype=np.int64)
    quota = np.zeros_like(avail)
    remaining = min(int(target), int(avail.sum()))
    open_ = avail > 0
    while remaining > 0 and open_.any():
        share = remaining // int(open_.sum())
        if share == 0:
            # Fewer units than open strata: one each to the largest (ties by index), deterministic.
            order = sorted(np.flatnonzero(open_), key=lambda i: (-(avail[i] - quota[i]), i))
            for i in order[:remaining]:
                quota[i] += 1
            break
        grant = np.minimum(avail - quota, share) * open_
        quota += grant
        remaining -= int(grant.sum())
        open_ = quota < avail
    return quota.tolist()


def select_qi(
    quality: np.ndarray,
    instability: np.ndarray,
    strata: np.ndarray,
    box: QIBox,
    target: int,
    tiebreak: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the selected candidates (sorted).

    Candidates inside the box are grouped by `strata` (e.g. "category|label"); each stratum's quota
    comes from `allocate`; within a stratum the most unstable are kept first (the most signal), ties
    broken by `tiebreak` (e.g. a hash of the id) so the choice is reproducible.
    """
    quality, instability = np.asarray(quality, float), np.asarray(instability, float)
    inside = np.flatnonzero(box.mask(quality, instability))
    if inside.size == 0:
        return inside
    keys, inverse = np.unique(np.asarray(strata)[inside], return_inverse=True)
    tb = np.zeros(len(quality)) if tiebreak is None else np.asarray(tiebreak)
    # One sort for all strata: by stratum, then instability descending, then tiebreak.
    order = np.lexsort((tb[inside], -instability[inside], inverse))
    sorted_strata = inverse[order]
    starts = np.searchsorted(sorted_strata, np.arange(len(keys)))
    counts = np.bincount(sorted_strata, minlength=len(keys))
    quotas = allocate(counts.tolist(), target)
    chosen = [order[s : s + q] for s, q in zip(starts, quotas, strict=True) if q]
    return np.sort(inside[np.concatenate(chosen)]) if chosen else inside[:0]


# ---------------------------------------------------------------------------------------------------
# Scoring, cached and resumable
# ---------------------------------------------------------------------------------------------------


class ResponseSampler(Protocol):
    """K responses per candidate from the policy under curation (the rollout interface)."""

    name: str

    def sample(self, rows: list[dict], k: int) -> list[list[str]]: ...


class ResponseJudge(Protocol):
    """A score in [0, 1] for one response to one row (the judge interface)."""

    name: str

    def score(self, rows: list[dict], responses: list[str]) -> list[float]: ...


@dataclass
class ScoreRecord:
    id: str
    scores: list[float]
    quality: float
    instability: float

    def to_json(self) -> str:
        return json.dumps(
            {"id": self.id, "scores": self.scores, "quality": self.quality, "instability": self.instability}
        )


def read_cache(path: Path) -> dict[str, ScoreRecord]:
    """Records already scored. A torn last line (a crash mid-write) is ignored and rescored."""
    done: dict[str, ScoreRecord] = {}
    if not path.exists():
        return done
    with path.open() as fh:
        for line in fh:
            try:
                rec = json.loads(line)
                done[rec["id"]] = ScoreRecord(rec["id"], rec["scores"], rec["quality"], rec["instability"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def score_candidates(
    rows: Iterable[dict],
    sampler: ResponseSampler,
    judge: ResponseJudge,
    cache_file: str | Path,
    k: int = 4,
    batch_size: int = 16,
    spread: str = "std",
    progress: Callable[[int], None] | None = None,
) -> dict[str, ScoreRecord]:
    """Score every row not already in `cache_file`; append each batch as it completes.

    The cache records which sampler and judge produced it (a header line); resuming with different
    ones is refused, since mixing two judges' scores in one QI box would be meaningless.
    """
    cache_file = Path(cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    header = {"sampler": sampler.name, "judge": judge.name, "k": k, "spread": spread}
    _check_header(cache_file, header)
    done = read_cache(cache_file)
    todo = [row for row in rows if row["id"] not in done]
    _end_torn_line(cache_file)
    with cache_file.open("a") as fh:
        if fh.tell() == 0:
            fh.write(json.dumps({"header": header}) + "\n")
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            responses = sampler.sample(batch, k)
            if [len(group) for group in responses] != [k] * len(batch):
                raise ValueError(
                    f"sampler {sampler.name} did not return {k} responses for each of {len(batch)} rows"
                )
            flat_rows = [row for row, group in zip(batch, responses, strict=True) for _ in group]
            flat = judge.score(flat_rows, [r for group in responses for r in group])
            if len(flat) != len(flat_rows):
                raise ValueError(
                    f"judge {judge.name} returned {len(flat)} scores for {len(flat_rows)} responses"
                )
            for i, row in enumerate(batch):
                scores = [float(s) for s in flat[i * k : (i + 1) * k]]
                if any(not math.isfinite(s) or not 0 <= s <= 1 for s in scores):
                    raise ValueError(
                        f"judge {judge.name} returned scores outside [0, 1] for id {row['id']!r}"
                    )
                quality, instability = qi_stats(scores, spread)
                done[row["id"]] = rec = ScoreRecord(row["id"], scores, quality, instability)
                fh.write(rec.to_json() + "\n")
            fh.flush()
            if progress:
                progress(len(batch))
    return done


def _end_torn_line(cache_file: Path) -> None:
    """A crash mid-write leaves a line without its newline; end it, or the next record would be glued to it."""
    if cache_file.exists() and cache_file.stat().st_size:
        with cache_file.open("rb+") as fh:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def _check_header(cache_file: Path, header: dict) -> None:
    if not cache_file.exists() or cache_file.stat().st_size == 0:
        return
    with cache_file.open() as fh:
        first = json.loads(fh.readline() or "{}").get("header")
    if first != header:
        raise ValueError(
            f"{cache_file} was scored with {first}, not {header}: use a new cache file or the same setup"
        )
