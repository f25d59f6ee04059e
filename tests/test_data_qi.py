"""QI math (hand-computed cases), selection, and resumable scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saferl.data.qi import QIBox, allocate, qi_stats, read_cache, score_candidates, select_qi


def test_qi_stats_by_hand() -> None:
    assert qi_stats([1, 0, 1, 0]) == (0.5, 0.5)
    assert qi_stats([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.0))
    assert qi_stats([0.0, 1.0, 0.5], spread="range") == (0.5, 1.0)
    with pytest.raises(ValueError):
        qi_stats([])


def test_allocate_water_fills() -> None:
    assert allocate([10, 10, 10], 9) == [3, 3, 3]
    assert allocate([1, 10, 10], 9) == [1, 4, 4]  # the small stratum gives what it has
    assert allocate([2, 2, 100], 50) == [2, 2, 46]
    assert allocate([5, 5], 100) == [5, 5]  # never more than available
    assert allocate([3, 3, 3], 4) == [2, 1, 1]  # remainder to the largest, ties by index
    assert allocate([0, 4], 3) == [0, 3]


def test_box_mask() -> None:
    box = QIBox(0.25, 0.75, 0.2)
    q = np.array([0.5, 0.5, 0.1, 0.9, 0.25])
    i = np.array([0.3, 0.1, 0.4, 0.4, 0.2])
    assert box.mask(q, i).tolist() == [True, False, False, False, True]
    with pytest.raises(ValueError):
        QIBox(0.8, 0.2, 0.1)


def test_select_is_stratified_and_prefers_instability() -> None:
    quality = np.array([0.5] * 8 + [0.9])
    instability = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.9])
    strata = np.array(["a"] * 6 + ["b"] * 2 + ["b"])  # index 8 is outside the box (quality 0.9)
    chosen = select_qi(quality, instability, strata, QIBox(0.25, 0.75, 0.1), target=4)
    assert chosen.tolist() == [0, 1, 6, 7]  # two per stratum, the most unstable of each


def test_select_159k_is_fast_and_exact() -> None:
    rng = np.random.default_rng(0)
    n = 159_000
    quality, instability = rng.random(n), rng.random(n) * 0.5
    strata = rng.integers(0, 40, n).astype(str)
    chosen = select_qi(quality, instability, strata, QIBox(), target=10_000, tiebreak=rng.random(n))
    assert len(chosen) == 10_000 and len(set(chosen.tolist())) == 10_000
    assert QIBox().mask(quality[chosen], instability[chosen]).all()
    assert np.bincount(strata[chosen].astype(int), minlength=40).tolist() == [250] * 40


class CountingSampler:
    """Follows the sampler interface; records calls so resumption can be checked."""

    name = "counting-sampler"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def sample(self, rows: list[dict], k: int) -> list[list[str]]:
        self.calls += [r["id"] for r in rows]
        return [[f"{r['id']}-{j}" for j in range(k)] for r in rows]


class IndexJudge:
    name = "index-judge"

    def score(self, rows: list[dict], responses: list[str]) -> list[float]:
        return [int(r.rsplit("-", 1)[1]) / 3 for r in responses]


def test_scoring_is_cached_and_resumes(tmp_path: Path) -> None:
    rows = [{"id": f"s{i}"} for i in range(10)]
    cache = tmp_path / "qi.jsonl"
    sampler = CountingSampler()
    first = score_candidates(rows[:6], sampler, IndexJudge(), cache, k=4, batch_size=4)
    assert first["s0"].scores == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert first["s0"].quality == pytest.approx(0.5)
    # A crash mid-write leaves a torn line: it is ignored and that candidate is rescored.
    with cache.open("a") as fh:
        fh.write('{"id": "s6", "scores": [0.1')
    second = score_candidates(rows, sampler, IndexJudge(), cache, k=4, batch_size=4)
    assert sampler.calls == [f"s{i}" for i in range(6)] + [f"s{i}" for i in range(6, 10)]
    assert len(second) == 10 and set(read_cache(cache)) == {f"s{i}" for i in range(10)}


def test_cache_refuses_another_judge(tmp_path: Path) -> None:
    cache = tmp_path / "qi.jsonl"
    score_candidates([{"id": "a"}], CountingSampler(), IndexJudge(), cache, k=4)
    other = IndexJudge()
    other.name = "another-judge"
    with pytest.raises(ValueError, match="scored with"):
        score_candidates([{"id": "b"}], CountingSampler(), other, cache, k=4)
    assert json.loads(cache.read_text().splitlines()[0])["header"]["judge"] == "index-judge"


def test_out_of_range_scores_are_refused(tmp_path: Path) -> None:
    judge = IndexJudge()
    judge.score = lambda rows, responses: [2.0] * len(responses)
    with pytest.raises(ValueError, match="outside"):
        score_candidates([{"id": "a"}], CountingSampler(), judge, tmp_path / "c.jsonl", k=2)
