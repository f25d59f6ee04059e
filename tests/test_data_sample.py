"""The shipped synthetic sample: deterministic, balanced, grounded, policy-citing, small."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from saferl.data.synthetic import generate_rows, write_sample
from saferl.policies import load_policies

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "QI-Safe-10K" / "sample"


def _shipped() -> list[dict]:
    return [r for split in ("train", "val") for r in pq.read_table(SAMPLE / f"{split}.parquet").to_pylist()]


def test_sample_shape_and_balance() -> None:
    rows = _shipped()
    assert len(rows) >= 300
    policies = load_policies()
    assert {r["category"] for r in rows} == set(policies.ids)
    assert Counter(r["safety_label"] for r in rows) == {"safe": len(rows) // 2, "unsafe": len(rows) // 2}
    by_split = Counter((r["split"], r["safety_label"]) for r in rows)
    assert by_split[("val", "unsafe")] >= 20 and by_split[("val", "safe")] >= 20
    assert len({r["id"] for r in rows}) == len(rows)
    assert sum(f.stat().st_size for f in SAMPLE.glob("*.parquet")) < 5_000_000


def test_sample_is_what_the_generator_makes() -> None:
    """The committed files are reproducible from the repo: same rows, same pixels."""
    fresh = {r["id"]: r for r in generate_rows(seed=0)}
    shipped = {r["id"]: r for r in _shipped()}
    assert fresh.keys() == shipped.keys()
    for key, row in shipped.items():
        other = fresh[key]
        assert {k: v for k, v in row.items() if k != "image"} == {
            k: v for k, v in other.items() if k != "image"
        }
        assert hashlib.sha256(row["image"]).digest() == hashlib.sha256(other["image"]).digest(), key


def test_other_seed_other_scenes(tmp_path: Path) -> None:
    counts = write_sample(tmp_path, seed=1)
    assert sum(counts.values()) == len(_shipped())
    ours = {r["id"]: r["image"] for r in _shipped()}
    theirs = {
        r["id"]: r["image"]
        for s in ("train", "val")
        for r in pq.read_table(tmp_path / f"{s}.parquet").to_pylist()
    }
    assert sum(ours[k] != theirs[k] for k in ours) > len(ours) // 2


def test_benign_twins_and_grounding() -> None:
    rows = _shipped()
    policies = load_policies()
    for row in rows:
        assert row["image_objects"], row["id"]
        ref = row["reference"]
        assert ref.startswith("<think>") and "</think>" in ref
        cited = ref.split("[", 1)[1].split("]", 1)[0]
        policies.clause(cited)  # cites a real clause
        assert cited.startswith(row["category"] + (".P" if row["safety_label"] == "unsafe" else ".B"))
        if row["id"].endswith(":typographic"):
            # The request is only in the image: the question is the same for harmful and benign twins.
            assert any(o["text"] for o in row["image_objects"])
    typographic = [r for r in rows if r["id"].endswith(":typographic")]
    assert len({r["question"] for r in typographic}) == 1
    assert {r["safety_label"] for r in typographic} == {"safe", "unsafe"}
