"""Curation end to end on the local source fixtures: pool, decontaminate, QI-score, select, manifest.

The sampler is real (the tiny model generating through transformers); the judge is a hash stand-in
(tests/standin_judges.py) until the reward component's judges are wired in.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from saferl.data.curate import CurationError, load_config, run_curation
from saferl.data.decontam import BenchmarkIndex, decontaminate, normalize_question
from saferl.data.schema import rows_to_table
from saferl.data.sources import load_source
from saferl.data.validate import validate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sources"
CONFIG = Path(__file__).resolve().parents[1] / "data" / "QI-Safe-10K" / "curate.yaml"


def _reencode(image: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@pytest.fixture(scope="module")
def contaminated_benchmark(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """A benchmark in our schema holding one pool image (re-encoded) and one pool question (re-cased)."""
    vl = list(load_source("vlguard", FIXTURES / "vlguard"))
    spa = list(load_source("spa_vl", FIXTURES / "spa_vl" / "data"))
    image_twin = {
        **spa[0],
        "id": "bench:1",
        "question": "an unrelated question",
        "image": _reencode(spa[0]["image"]),
    }
    question_twin = {**spa[1], "id": "bench:2", "question": "  " + spa[1]["question"].upper() + "?!"}
    question_twin["image"] = vl[0]["image"] if vl[0]["image"] != spa[1]["image"] else vl[1]["image"]
    path = tmp_path_factory.mktemp("bench") / "bench.parquet"
    pq.write_table(rows_to_table([image_twin, question_twin]), path)
    # The vlguard image reused above is contaminated too: every pool row that shares it goes.
    expected = {spa[0]["id"], spa[1]["id"]} | {r["id"] for r in vl if r["image"] == question_twin["image"]}
    return path, expected


def _overrides(out: Path, bench: Path, model: Path) -> list[str]:
    return [
        f"output_dir={out}",
        f"sources=[{{adapter: beavertails_v, location: {FIXTURES / 'beavertails_v/data/violence_and_physical_harm'}}},"
        f"{{adapter: beavertails_v, location: {FIXTURES / 'beavertails_v/data/privacy_invasion_and_surveillance'}}},"
        f"{{adapter: spa_vl, location: {FIXTURES / 'spa_vl/data'}}},"
        f"{{adapter: vlguard, location: {FIXTURES / 'vlguard'}}}]",
        f"decontamination.benchmarks=[{{name: fixture_bench, adapter: qi_safe, location: {bench}}}]",
        "scoring.k=3",
        "scoring.batch_size=4",
        f"scoring.sampler.model={model}",
        "scoring.sampler.max_new_tokens=4",
        "scoring.sampler.device=cpu",
        "selection.quality_min=0.2",
        "selection.quality_max=0.8",
        "selection.instability_min=0.1",
        "selection.target_size=8",
        "selection.val_fraction=0.25",
    ]


def _config(out: Path, bench: Path, model: Path, overrides: list[str] | None = None):
    """The default config with the fixtures, the tiny model as sampler and the hash stand-in as judge."""
    cfg = load_config(CONFIG, overrides or _overrides(out, bench, model))
    cfg.scoring.judge = {"_target_": "standin_judges.HashStandInJudge"}
    return cfg


def test_question_normalisation() -> None:
    assert normalize_question("  How do I  kill a process?! ") == normalize_question(
        "how do i kill a PROCESS"
    )


def test_decontamination_by_image_and_question(contaminated_benchmark: tuple[Path, set[str]]) -> None:
    bench, expected = contaminated_benchmark
    index = BenchmarkIndex(perceptual=True)
    index.add("fixture_bench", pq.read_table(bench).to_pylist())
    pool = list(load_source("spa_vl", FIXTURES / "spa_vl" / "data")) + list(
        load_source("vlguard", FIXTURES / "vlguard")
    )
    kept, report = decontaminate(pool, index)
    assert {r["id"] for r in report.removed} == expected
    assert len(kept) + len(report.removed) == len(pool)
    reasons = {r["id"]: r["reason"] for r in report.removed}
    assert "image" in reasons[sorted(expected)[0]] or "question" in reasons[sorted(expected)[0]]
    assert report.counts()["removed_by_benchmark"] == {"fixture_bench": len(expected)}


def test_curation_end_to_end_and_resume(
    contaminated_benchmark: tuple[Path, set[str]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    bench, expected = contaminated_benchmark
    out = tmp_path / "curate"
    cfg = _config(out, bench, tiny_model_dir)
    manifest = run_curation(cfg, progress=False)

    counts = manifest["counts"]
    assert counts["pool"] == sum(counts["pool_by_source"].values()) > 0
    assert counts["after_decontamination"] == counts["pool"] - len(expected)
    assert 0 < counts["selected"] <= 8 and counts["selected"] <= counts["in_qi_box"]
    assert counts["shortfall"] == 8 - counts["selected"]
    assert manifest["judge"] == "hash-stand-in" and manifest["sampler"].startswith("hf:")
    assert sum(manifest["selected_by_label"].values()) == counts["selected"]

    removed = json.loads((out / "decontamination.json").read_text())
    assert {r["id"] for r in removed["removed_rows"]} == expected
    selected = [r for s in ("train", "val") for r in pq.read_table(out / f"{s}.parquet").to_pylist()]
    assert not {r["id"] for r in selected} & expected
    assert validate(out / "train.parquet").ok and validate(out / "val.parquet").ok

    scores = {
        json.loads(line).get("id"): json.loads(line)
        for line in (out / "qi_scores.jsonl").read_text().splitlines()
    }
    for row in selected:
        rec = scores[row["id"]]
        assert len(rec["scores"]) == 3
        assert 0.2 <= rec["quality"] <= 0.8 and rec["instability"] >= 0.1

    # A second run resumes: nothing is rescored, the same selection comes out.
    lines_before = (out / "qi_scores.jsonl").read_text()
    again = run_curation(_config(out, bench, tiny_model_dir), progress=False)
    assert (out / "qi_scores.jsonl").read_text() == lines_before
    assert again["counts"] == counts


def test_curate_cli_names_unset_keys(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "saferl.data", "curate", "--config", str(CONFIG), f"output_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "scoring.sampler.model" in result.stderr


def test_duplicate_ids_across_sources_are_refused(
    contaminated_benchmark: tuple[Path, set[str]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    overrides = _overrides(tmp_path, contaminated_benchmark[0], tiny_model_dir)
    twice = f"{{adapter: vlguard, location: {FIXTURES / 'vlguard'}}}"
    overrides[1] = f"sources=[{twice}, {twice}]"
    with pytest.raises(CurationError, match="duplicate id 'vlguard:"):
        run_curation(_config(tmp_path, contaminated_benchmark[0], tiny_model_dir, overrides), progress=False)


def test_curation_judge_is_the_reward_normalised() -> None:
    """QI scoring through the real reward (rule judge): references score high, harmful answers low."""
    from rewards.curation import CurationJudge

    rows = pq.read_table(
        Path(__file__).resolve().parents[1] / "data/QI-Safe-10K/sample/val.parquet"
    ).to_pylist()
    unsafe = [r for r in rows if r["safety_label"] == "unsafe"][:5]
    judge = CurationJudge(["judge.kind=rule"])
    good = judge.score(unsafe, [r["reference"] for r in unsafe])
    bad = judge.score(unsafe, ["<think>Sure.</think>Sure, here is how: step 1, get it."] * len(unsafe))
    assert all(0.9 <= g <= 1 for g in good) and all(0 <= b < 0.55 for b in bad)
    assert judge.name.startswith("rule")
