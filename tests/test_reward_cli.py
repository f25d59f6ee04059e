"""`python -m rewards score`: the shipped sample scored by each judge from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from judge_server import FakeJudgeServer

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "QI-Safe-10K" / "sample"


@pytest.fixture(scope="module")
def sample_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The val split as the command line's input: images as files, references as responses."""
    out = tmp_path_factory.mktemp("cli")
    (out / "images").mkdir()
    with (out / "in.jsonl").open("w") as fh:
        for row in pq.read_table(SAMPLE / "val.parquet").to_pylist():
            image = out / "images" / f"{row['id'].replace(':', '_')}.png"
            image.write_bytes(row["image"])
            fh.write(
                json.dumps(
                    {
                        "id": row["id"],
                        "question": row["question"],
                        "image": f"images/{image.name}",
                        "response": row["reference"],
                        "safety_label": row["safety_label"],
                        "category": row["category"],
                        "image_objects": row["image_objects"],
                    }
                )
                + "\n"
            )
    return out / "in.jsonl"


def _score(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rewards", "score", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rule_judge_scores_the_sample(sample_jsonl: Path, tmp_path: Path) -> None:
    result = _score("--judge", "rule", "--input", str(sample_jsonl), "--output", str(tmp_path / "out.jsonl"))
    assert result.returncode == 0, result.stderr
    rows = _read(tmp_path / "out.jsonl")
    assert len(rows) == 108
    for row in rows:
        assert row["judge_error"] is None and row["score"] >= 9.0
        assert set(row["criteria"]) == {
            "safety_awareness",
            "helpfulness",
            "reasoning_coherence",
            "visual_grounding",
            "format",
        }
        assert set(row["penalties"]) == {"hallucination", "contradiction", "injection"}
        assert isinstance(row["flags"], list) and row["image"].startswith("images/")


def test_openai_judge_scores_the_sample_against_a_fake_72b_server(sample_jsonl: Path, tmp_path: Path) -> None:
    with FakeJudgeServer(latency_ms=5) as server:
        result = _score(
            "--judge",
            "openai",
            "--base-url",
            server.base_url,
            "--model",
            "fake-72b",
            "--input",
            str(sample_jsonl),
            "--output",
            str(tmp_path / "out.jsonl"),
            env={"SAFERL_JUDGE_API_KEY": "sk-test-secret-123"},
        )
        assert result.returncode == 0, result.stderr
        assert len(server.requests) == 108
        assert server.requests[0]["headers"].get("Authorization") == "Bearer sk-test-secret-123"
    rows = _read(tmp_path / "out.jsonl")
    assert all(r["judge_error"] is None and isinstance(r["score"], float) for r in rows)
    assert "sk-test-secret-123" not in result.stdout + result.stderr + (tmp_path / "out.jsonl").read_text()


def test_openai_judge_down_fails_with_endpoint_and_last_error(sample_jsonl: Path, tmp_path: Path) -> None:
    with FakeJudgeServer() as server:
        server.script([{"status": 503}] * 400)
        result = _score(
            "--judge",
            "openai",
            "--base-url",
            server.base_url,
            "--model",
            "fake-72b",
            "--override",
            "judge.openai.max_retries=1",
            "--override",
            "judge.openai.backoff_s=0.01",
            "--input",
            str(sample_jsonl),
            "--output",
            str(tmp_path / "out.jsonl"),
        )
    assert result.returncode == 3
    assert server.base_url in result.stderr and "503" in result.stderr
    rows = _read(tmp_path / "out.jsonl")  # what was judged (and failed) is written, nothing silent
    assert rows and all(r["score"] is None and "503" in r["judge_error"] for r in rows)


def test_neutral_policy_gives_the_neutral_score_and_says_why(sample_jsonl: Path, tmp_path: Path) -> None:
    small = tmp_path / "in.jsonl"
    small.write_text("\n".join(sample_jsonl.read_text().splitlines()[:3]) + "\n")
    (tmp_path / "images").symlink_to(sample_jsonl.parent / "images")
    with FakeJudgeServer() as server:
        server.script([{"content": "not json at all"}] * 6)  # 3 inputs x (1 try + 1 retry)
        result = _score(
            "--judge",
            "openai",
            "--base-url",
            server.base_url,
            "--model",
            "fake-72b",
            "--on-failure",
            "neutral",
            "--override",
            "judge.openai.max_retries=1",
            "--override",
            "judge.openai.backoff_s=0.01",
            "--override",
            "faults.neutral_score=1.5",
            "--input",
            str(small),
            "--output",
            str(tmp_path / "out.jsonl"),
        )
    assert result.returncode == 0, result.stderr  # 3 failures < faults.min_samples: no batch verdict
    rows = _read(tmp_path / "out.jsonl")
    assert len(rows) == 3
    for row in rows:
        assert row["score"] == 1.5 and "judge_failure" in row["flags"] and row["criteria"] == {}
        assert "no JSON object" in row["judge_error"]


def test_hf_judge_scores_the_sample_with_the_tiny_model(
    sample_jsonl: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    result = _score(
        "--judge",
        "hf",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--input",
        str(sample_jsonl),
        "--output",
        str(tmp_path / "out.jsonl"),
    )
    assert result.returncode == 0, result.stderr
    rows = _read(tmp_path / "out.jsonl")
    assert len(rows) == 108 and all(r["judge_error"] is None for r in rows)
    for row in rows:  # an untrained judge: the numbers mean nothing, but they are valid and complete
        assert all(0 <= v <= 10 for v in row["criteria"].values()) and -10 <= row["score"] <= 10


def test_bad_input_names_the_line(sample_jsonl: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = sample_jsonl.read_text().splitlines()
    broken = json.loads(lines[2])
    broken["image"] = "images/missing.png"
    bad.write_text("\n".join([lines[0], lines[1], json.dumps(broken)]) + "\n")
    (tmp_path / "images").symlink_to(sample_jsonl.parent / "images")
    result = _score("--judge", "rule", "--input", str(bad), "--output", str(tmp_path / "out.jsonl"))
    assert result.returncode == 1
    assert f"{bad}:3" in result.stderr and "missing.png" in result.stderr
