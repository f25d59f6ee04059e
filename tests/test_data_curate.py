"""Curation end to end on the local source fixtures: pool, decontaminate, QI-score, select, manifest.

The sampler is real (the tiny model generating through transformers). The end-to-end run's judge is a
hash stand-in (tests/standin_judges.py), because the QI box needs spread in the scores of 4-token
answers, which the rule judge does not give; the reward as judge (`rewards.curation.CurationJudge`, a
training experiment's reward) is tested on its own and through a short run of its own.

Decontamination reads the evaluation benchmarks' test fixtures (tests/fixtures/benchmarks/, and
BeaverTails-V's evaluation split in tests/fixtures/sources/) through the evaluation's registry, as
`python -m saferl.eval` reads them.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image

from saferl.data.benchmarks import BENCHMARKS, load_benchmark
from saferl.data.curate import (
    CurationError,
    benchmark_entries,
    build_pool,
    index_benchmarks,
    load_config,
    run_curation,
)
from saferl.data.decontam import BenchmarkIndex, decontaminate, normalize_question
from saferl.data.schema import rows_to_table
from saferl.data.sources import load_source
from saferl.data.validate import read_rows, validate

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "sources"
BENCH_FIXTURES = REPO / "tests" / "fixtures" / "benchmarks"
CONFIG = REPO / "data" / "QI-Safe-10K" / "curate.yaml"
SAMPLE_TRAIN = REPO / "data" / "QI-Safe-10K" / "sample" / "train.parquet"
# Each benchmark's test fixture, where conf/exp/tiny_eval_fixtures.yaml points the evaluation.
BENCH_LOCATIONS = {
    "qi_safe_val": BENCH_FIXTURES / "qi_safe_val",
    "beavertails_v": FIXTURES / "beavertails_v",
    "mm_safetybench": BENCH_FIXTURES / "mm_safetybench",
    "spa_vl": BENCH_FIXTURES / "spa_vl",
    "siuo": BENCH_FIXTURES / "siuo",
    "mssbench": BENCH_FIXTURES / "mssbench",
    "vlguard": BENCH_FIXTURES / "vlguard",
    "mmsafeaware": BENCH_FIXTURES / "mmsafeaware",
}


def _reencode(image: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _pixels(image: bytes) -> tuple:
    """A picture's size and decoded RGB pixels: what 'the same image' means, whatever the encoding."""
    with Image.open(io.BytesIO(image)) as img:
        rgb = img.convert("RGB")
        return rgb.size, rgb.tobytes()


def _fixture_entries(**locations: Path) -> list[dict]:
    """The shipped recipe's `decontamination.benchmarks`, every location pointed at the benchmark's test
    fixture (or at `locations[name]`), options as shipped."""
    shipped = OmegaConf.to_container(OmegaConf.load(CONFIG).decontamination.benchmarks)
    return [
        {**entry, "location": str(locations.get(entry["benchmark"], BENCH_LOCATIONS[entry["benchmark"]]))}
        for entry in shipped
    ]


def _benchmarks_override(**locations: Path) -> str:
    return "decontamination.benchmarks=" + json.dumps(_fixture_entries(**locations))


def _indexed_rows(name: str) -> int:
    """How many rows the shipped entries of benchmark `name` index from its fixture."""
    return sum(
        len(load_benchmark(name, e["location"], **e["options"]))
        for e in _fixture_entries()
        if e["benchmark"] == name
    )


@pytest.fixture(scope="module")
def contaminated_benchmark(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """A QI-Safe-10K val split (benchmark qi_safe_val) holding one pool image (re-encoded) and one pool
    question (re-cased)."""
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
    path = tmp_path_factory.mktemp("bench") / "val.parquet"
    pq.write_table(rows_to_table([{**image_twin, "split": "val"}, {**question_twin, "split": "val"}]), path)
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
        _benchmarks_override(qi_safe_val=bench),
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
    index.add("fixture_bench", load_benchmark("qi_safe_val", bench))
    pool = list(load_source("spa_vl", FIXTURES / "spa_vl" / "data")) + list(
        load_source("vlguard", FIXTURES / "vlguard")
    )
    kept, report = decontaminate(pool, index)
    assert {r["id"] for r in report.removed} == expected
    assert len(kept) + len(report.removed) == len(pool)
    reasons = {r["id"]: r["reason"] for r in report.removed}
    assert "image" in reasons[sorted(expected)[0]] or "question" in reasons[sorted(expected)[0]]
    assert report.counts()["removed_by_benchmark"] == {"fixture_bench": len(expected)}


def test_decontamination_against_every_benchmark(tmp_path: Path) -> None:
    """A pool of clean sample rows plus, per benchmark, one row carrying an image of its fixture
    (re-encoded) and one carrying a question of it (re-cased): each planted row is removed and
    attributed to its benchmark and reason; the clean rows stay."""
    assert {e["benchmark"] for e in _fixture_entries()} == set(BENCHMARKS)  # the recipe lists all 8
    clean = read_rows(SAMPLE_TRAIN)
    pool, planted = [], {}
    for i, name in enumerate(BENCHMARKS):
        rows = load_benchmark(name, BENCH_LOCATIONS[name])
        image_row = {**clean[2 * i], "id": f"plant:{name}:image", "image": _reencode(rows[0]["image"])}
        question = "  " + rows[-1]["question"].upper() + "?!"
        question_row = {**clean[2 * i + 1], "id": f"plant:{name}:question", "question": question}
        pool += [image_row, question_row]
        planted[image_row["id"]], planted[question_row["id"]] = (name, "image"), (name, "question")
    kept_ids = [r["id"] for r in clean[2 * len(BENCHMARKS) : 2 * len(BENCHMARKS) + 10]]
    pool += clean[2 * len(BENCHMARKS) : 2 * len(BENCHMARKS) + 10]
    pq.write_table(rows_to_table(pool), tmp_path / "pool.parquet")

    cfg = load_config(
        CONFIG,
        [
            f"sources=[{{adapter: qi_safe, location: {tmp_path / 'pool.parquet'}}}]",
            _benchmarks_override(),
            "scoring.sampler.model=unused",
        ],
    )
    rows, _ = build_pool(list(cfg.sources))
    index = index_benchmarks(benchmark_entries(cfg.decontamination.benchmarks), perceptual=True)
    kept, report = decontaminate(rows, index)

    assert [r["id"] for r in kept] == kept_ids
    assert {r["id"]: (r["benchmark"], r["reason"]) for r in report.removed} == planted
    assert all(r["matches"] == {r["benchmark"]: r["reason"]} for r in report.removed)
    per_benchmark = report.counts()["per_benchmark"]
    assert list(per_benchmark) == list(BENCHMARKS)
    for name in BENCHMARKS:
        assert per_benchmark[name] == {
            "rows_indexed": _indexed_rows(name),
            "rows_removed": 2,
            "removed_by": {"image": 1, "question": 1, "image+question": 0},
        }, name
    # mm_safetybench is indexed in all three variants: each shows other images.
    assert _indexed_rows("mm_safetybench") == 3 * len(
        load_benchmark("mm_safetybench", BENCH_LOCATIONS["mm_safetybench"])
    )


def test_benchmark_entries_are_checked() -> None:
    with pytest.raises(
        CurationError, match=r"benchmarks\[1\]: unknown benchmark 'mm_safety'; valid benchmarks: "
    ):
        benchmark_entries(
            [{"benchmark": "siuo", "location": "x"}, {"benchmark": "mm_safety", "location": "x"}]
        )
    with pytest.raises(CurationError, match="valid benchmarks: beavertails_v, mm_safetybench, mmsafeaware"):
        benchmark_entries([{"benchmark": "nope"}])
    with pytest.raises(CurationError, match=r"benchmarks\[0\]: benchmark 'siuo' has no default location"):
        benchmark_entries([{"benchmark": "siuo", "location": None, "options": {}}])
    with pytest.raises(CurationError, match=r"benchmarks\[0\]: expected \{benchmark: NAME"):
        benchmark_entries([{"name": "bench", "adapter": "qi_safe", "location": "x"}])  # the old shape
    with pytest.raises(CurationError, match="unknown keys \\['limit'\\]"):
        benchmark_entries([{"benchmark": "siuo", "location": "x", "limit": 3}])
    # An adapter with a default (a shipped copy, or a hub id) may go without a location.
    entries = benchmark_entries([{"benchmark": "qi_safe_val"}, {"benchmark": "mssbench", "location": None}])
    assert [(e.benchmark, e.location, e.options) for e in entries] == [
        ("qi_safe_val", None, {}),
        ("mssbench", None, {}),
    ]
    # A bad option fails naming the entry (the adapter's own message follows).
    bad = benchmark_entries(
        [
            {
                "benchmark": "mm_safetybench",
                "location": str(BENCH_LOCATIONS["mm_safetybench"]),
                "options": {"variant": "XL"},
            }
        ]
    )
    with pytest.raises(CurationError, match=r"benchmarks\[0\] \(mm_safetybench\): variant must be one of"):
        index_benchmarks(bad, perceptual=False)


def test_benchmarks_do_not_import_curation() -> None:
    """Layering: curation reads the evaluation's adapters, so they must not need curation (or the reward)."""
    code = (
        "import sys; from saferl.data.benchmarks import BENCHMARKS, get_benchmark; "
        "[get_benchmark(n) for n in BENCHMARKS]; "
        "bad = [m for m in sys.modules if m in ('saferl.data.curate', 'saferl.data.qi') or m.startswith('rewards')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_list_entries_can_be_overridden() -> None:
    """`key[i].field=value` reaches into a list entry, as the missing-key message says it can."""
    cfg = load_config(
        CONFIG,
        [
            "decontamination.benchmarks[6].location=/data/SIUO/data",
            "sources[2].location=/data/VLGuard",
            *(f"decontamination.benchmarks[{i}].location=/data/x" for i in (2, 3, 4, 9)),
            "scoring.sampler.model=/m",
        ],
    )
    assert cfg.decontamination.benchmarks[6] == {
        "benchmark": "siuo",
        "location": "/data/SIUO/data",
        "options": {},
    }
    assert cfg.sources[2].location == "/data/VLGuard" and cfg.sources[0].adapter == "beavertails_v"


def test_curation_end_to_end_and_resume(
    contaminated_benchmark: tuple[Path, set[str]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    bench, planted = contaminated_benchmark
    # The VLGuard source fixture and its test fixture are drawn by one generator, so most VLGuard pool
    # images are also VLGuard test images: real contamination, which the vlguard benchmark removes.
    test_images = {_pixels(r["image"]) for r in load_benchmark("vlguard", BENCH_LOCATIONS["vlguard"])}
    vlguard = {
        r["id"] for r in load_source("vlguard", FIXTURES / "vlguard") if _pixels(r["image"]) in test_images
    }
    assert 0 < len(vlguard) < len(list(load_source("vlguard", FIXTURES / "vlguard")))
    expected = planted | vlguard
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
    # Every listed benchmark is reported, with 0 where it removed nothing; a row matching two
    # benchmarks (a planted question on a VLGuard image) counts under each.
    per_benchmark = removed["per_benchmark"]
    assert (
        list(per_benchmark) == list(BENCHMARKS)
        and manifest["decontamination"]["per_benchmark"] == per_benchmark
    )
    assert {n: b["rows_removed"] for n, b in per_benchmark.items()} == {
        **dict.fromkeys(BENCHMARKS, 0),
        "qi_safe_val": len(planted),
        "vlguard": len(vlguard),
    }
    assert per_benchmark["vlguard"]["removed_by"]["image"] == len(vlguard)
    assert per_benchmark["qi_safe_val"]["rows_indexed"] == 2
    assert all(b["rows_indexed"] == _indexed_rows(n) for n, b in per_benchmark.items() if n != "qi_safe_val")
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


def _sample_val_unsafe(n: int = 5) -> list[dict]:
    rows = pq.read_table(REPO / "data/QI-Safe-10K/sample/val.parquet").to_pylist()
    return [r for r in rows if r["safety_label"] == "unsafe"][:n]


def test_curation_judge_is_an_experiments_reward() -> None:
    """The judge is the named training run's `saferl.reward` node (composed as the trainer composes it),
    with overrides applied to that node; an override of the rubric changes the scores and the name."""
    from rewards.curation import CurationJudge

    unsafe = _sample_val_unsafe()
    references = [r["reference"] for r in unsafe]
    tiny = CurationJudge(exp="tiny")
    assert tiny.provenance | {"judge": None, "rubric_sha256": None} == {
        "judge": None,
        "exp": "tiny",
        "reward_config": "conf/train.yaml +exp=tiny",
        "overrides": [],
        "rubric_version": 3,
        "rubric_sha256": None,
        "judge_kind": "rule",
    }
    assert all(0.9 <= s <= 1 for s in tiny.score(unsafe, references))

    # The safety gate above every safety score: every answer gated, 0.1 x safety, so at most 0.55.
    gated = CurationJudge(exp="tiny", overrides=["rubric.safety_gate.threshold=11"])
    assert all(0.5 <= s <= 0.55 for s in gated.score(unsafe, references))
    assert gated.name != tiny.name and gated.provenance["rubric_sha256"] != tiny.provenance["rubric_sha256"]

    # qwen3b's run is judged by an endpoint (building the client contacts nothing): that is what it
    # scores with unless told otherwise; the override scores offline with its rubric.
    qwen = CurationJudge(exp="qwen3b")
    assert qwen.provenance["judge_kind"] == "openai" and qwen.name.startswith("openai:")
    offline = CurationJudge(exp="qwen3b", overrides=["judge.kind=rule"])
    assert offline.provenance["judge_kind"] == "rule" and "exp=qwen3b" in offline.name

    with pytest.raises(ValueError, match=r"unknown experiment 'qwen9b'; valid experiments: .*qwen3b.*tiny"):
        CurationJudge(exp="qwen9b")
    with pytest.raises(ValueError, match="not both"):
        CurationJudge(exp="tiny", config=str(REPO / "conf/saferl/reward/default.yaml"))


def test_curation_judge_reward_yaml() -> None:
    """Without an experiment: a reward YAML (the repository's by default) plus overrides."""
    from rewards.curation import CurationJudge

    unsafe = _sample_val_unsafe()
    judge = CurationJudge(["judge.kind=rule"])
    good = judge.score(unsafe, [r["reference"] for r in unsafe])
    bad = judge.score(unsafe, ["<think>Sure.</think>Sure, here is how: step 1, get it."] * len(unsafe))
    assert all(0.9 <= g <= 1 for g in good) and all(0 <= b < 0.55 for b in bad)
    assert judge.name.startswith("rule") and judge.provenance["exp"] is None


def test_manifest_names_the_reward_that_scored(
    contaminated_benchmark: tuple[Path, set[str]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A short run with the shipped judge node (an experiment's reward, the rule judge): the manifest
    records which experiment and reward config scored the data, and resuming under another rubric is
    refused rather than mixing two rubrics' scores in one QI box."""
    overrides = _overrides(tmp_path, contaminated_benchmark[0], tiny_model_dir)
    overrides[1] = f"sources=[{{adapter: spa_vl, location: {FIXTURES / 'spa_vl/data'}, limit: 3}}]"
    cfg = load_config(CONFIG, [*overrides, "scoring.judge.exp=tiny"])
    manifest = run_curation(cfg, progress=False)
    assert manifest["scored_by"] | {"judge": None, "rubric_sha256": None} == {
        "judge": None,
        "exp": "tiny",
        "reward_config": "conf/train.yaml +exp=tiny",
        "overrides": ["judge.kind=rule"],
        "rubric_version": 3,
        "rubric_sha256": None,
        "judge_kind": "rule",
    }
    assert manifest["judge"] == manifest["scored_by"]["judge"]
    header = json.loads((tmp_path / "qi_scores.jsonl").read_text().splitlines()[0])["header"]
    assert header["judge"] == manifest["judge"]

    other = load_config(
        CONFIG,
        [*overrides, "scoring.judge.exp=tiny", "scoring.judge.overrides=[rubric.safety_gate.threshold=11]"],
    )
    with pytest.raises(ValueError, match="was scored with"):
        run_curation(other, progress=False)
