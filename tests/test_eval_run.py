"""`python -m saferl.eval`: checkpoints resolved as users name them, the jsonl caches, and the whole run
as a user starts it (a subprocess, a real Ray, the tiny model's training checkpoints, every benchmark's
fixture, the rule judge), killed with SIGKILL and resumed, then judged again by a second judge (the
loopback FAKE of the 72B judge, tests/judge_server.py) without generating again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saferl.data.benchmarks import BENCHMARKS
from saferl.eval.run import check_meta, resolve_checkpoints
from saferl.files import append_jsonl, read_jsonl

SECRET = "sk-judge-never-logged-4242"


# ---------------------------------------------------------------------------------------------------
# Checkpoints as users name them
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run's directory laid out as verl's trainer writes it (`global_step_N/actor/huggingface`
    with `checkpoint.save_contents` holding `hf_model`, beside the FSDP shards), with two checkpoints,
    the second with perturbed weights (a policy that moved)."""
    import torch

    from saferl.models.checkpoint import load_vlm, save_vlm

    root = tmp_path_factory.mktemp("run")
    processor, model = load_vlm(tiny_model_dir)
    for step in (10, 20):
        actor = root / f"global_step_{step}" / "actor"
        save_vlm(model, processor, actor / "huggingface")
        (actor / "model_world_size_1_rank_0.pt").write_bytes(b"FSDP shard stand-in: not a model directory")
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    (root / "latest_checkpointed_iteration.txt").write_text("20")
    return root


def test_checkpoints_resolve_from_run_step_and_model_dirs(run_dir: Path, tiny_model_dir: Path) -> None:
    found = resolve_checkpoints([str(run_dir)], None)
    assert [(c.name, c.path) for c in found] == [
        ("global_step_10", (run_dir / "global_step_10" / "actor" / "huggingface").resolve()),
        ("global_step_20", (run_dir / "global_step_20" / "actor" / "huggingface").resolve()),
    ]
    step = resolve_checkpoints(
        [str(run_dir / "global_step_20"), str(run_dir / "global_step_10" / "actor" / "huggingface")], None
    )
    assert [c.name for c in step] == ["global_step_20", "global_step_10"]
    base = resolve_checkpoints([], str(tiny_model_dir))
    assert [(c.name, c.path) for c in base] == [("base", tiny_model_dir.resolve())]
    named = resolve_checkpoints(["base", f"rl/final={run_dir / 'global_step_20'}"], str(tiny_model_dir))
    assert named[0].name == "base" and named[1].name.startswith("rl_final_")  # file-name safe, unique


def test_checkpoint_errors_name_the_entry(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no/such/dir"):
        resolve_checkpoints(["no/such/dir"], None)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        resolve_checkpoints([str(tmp_path)], None)
    with pytest.raises(ValueError, match=r"named \['global_step_10'\].*NAME=PATH"):
        resolve_checkpoints([str(run_dir), str(run_dir / "global_step_10")], None)
    with pytest.raises(ValueError, match=r"needs actor_rollout_ref\.model\.path"):
        resolve_checkpoints(["base"], None)


@pytest.mark.parametrize(
    "exp", ["tiny", "tiny_smoke", "tiny_eval_fixtures", "qwen3b", "qwen7b", "qwen3b_pst"]
)
def test_eval_config_composes_for_every_experiment(exp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from saferl.resources import CONF_DIR, register_resolvers

    register_resolvers()  # `${saferl_repo:}` in the experiment files
    monkeypatch.setenv("SAFERL_DATA_DIR", "/data/qi-safe-10k")
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("eval", overrides=[f"+exp={exp}"])
    assert cfg.eval.agent_loop == "single_turn_agent" and cfg.data.filter_overlong_prompts is False
    assert cfg.reward.reward_manager.name == "saferl_safety"  # the training config underneath
    expected = {"tiny_eval_fixtures": 8}.get(exp, 1)
    assert len(cfg.eval.benchmarks) == expected
    OmegaConf.to_container(cfg.eval, resolve=True)  # every interpolation resolves
    # verl's standalone replicas (RolloutReplica.init_standalone), each loading the checkpoint itself:
    # with verl's `dummy` weights a vLLM replica would answer from random weights.
    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.nnodes == 1 and rollout.load_format == "auto"
    assert rollout.name == ("vllm" if exp.startswith("qwen") else "hf")


# ---------------------------------------------------------------------------------------------------
# Caches
# ---------------------------------------------------------------------------------------------------


def test_jsonl_cache_drops_only_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    append_jsonl(path, [{"id": "a"}, {"id": "b"}])
    with path.open("a") as handle:
        handle.write('{"id": "c", "resp')  # the process died mid-write
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_cache_meta_refuses_other_settings(tmp_path: Path) -> None:
    meta = tmp_path / "gen" / "meta.json"
    check_meta(meta, {"checkpoint_path": "/a", "temperature": 0.0})
    check_meta(meta, {"checkpoint_path": "/a", "temperature": 0.0})  # same settings: fine
    with pytest.raises(ValueError, match=r"other settings \(temperature.*another eval.output_dir"):
        check_meta(meta, {"checkpoint_path": "/a", "temperature": 1.0})


# ---------------------------------------------------------------------------------------------------
# The whole run, as a user starts it
# ---------------------------------------------------------------------------------------------------


def eval_command(out: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "saferl.eval",
        "+exp=tiny_eval_fixtures",  # every benchmark's FIXTURE + the QI-Safe-10K val split
        f"eval.checkpoints=[{run_dir}]",
        f"eval.output_dir={out}",
        "eval.limit=6",
        "eval.chunk_size=3",
        # Short answers keep the test quick; the tiny model's text is noise either way.
        "actor_rollout_ref.rollout.response_length=48",
        *overrides,
    ]


def environment(saferl_cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SAFERL_CACHE_DIR": str(saferl_cache),
        "WANDB_MODE": "offline",
        "SAFERL_JUDGE_API_KEY": SECRET,
    }


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


@pytest.mark.slow
def test_eval_kill_resume_report_and_second_judge(
    run_dir: Path, saferl_cache: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from judge_server import FakeJudgeServer

    out = tmp_path / "eval"
    env = environment(saferl_cache)
    first = out / "generations" / "global_step_10" / "qi_safe_val.jsonl"

    # 1. Killed (SIGKILL, no clean-up) once the first chunk of answers is on disk.
    proc = subprocess.Popen(
        eval_command(out, run_dir),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while len(lines(first)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    generations = sorted((out / "generations").rglob("*.jsonl"))
    before = {path: lines(path) for path in generations}
    assert len(lines(first)) >= 3, "the kill must land after the first chunk"
    # Two checkpoints x eight benchmarks: the first file finishing leaves most of the work undone.
    assert len(before) < 16 or sum(map(len, before.values())) < 6 * 16

    # 2. Started again: the finished answers are kept, not redone; the rest is done once.
    result = subprocess.run(
        eval_command(out, run_dir, "trainer.logger=[console,wandb]"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Generated by verl's server manager on the hf backend's replicas, one per fake GPU, started again
    # for the second checkpoint once the first's have given their devices back.
    launches = [line for line in result.stdout.splitlines() if line.startswith("LLMServerManager: ")]
    assert launches == ["LLMServerManager: ['saferl_hf_rollout_server_0', 'saferl_hf_rollout_server_1']"] * 2
    for path, done in before.items():
        checkpoint, benchmark = path.parent.name, path.stem
        assert f"{checkpoint} / {benchmark}: {len(done)} generated (cached)" in result.stdout, path
        after = lines(path)
        assert after[: len(done)] == done, path  # kept as they were
        assert len({json.loads(x)["id"] for x in after}) == len(after), path  # nothing done twice
    after = lines(first)
    assert len(after) == 6
    assert sum(len(lines(p)) for p in (out / "generations").rglob("*.jsonl")) > sum(map(len, before.values()))
    # The answer budget is rollout.response_length (as verl's vLLM server), not the HF server's own
    # default: the tiny model's noise never ends by itself, so every answer fills it.
    assert {json.loads(x)["response_tokens"] for x in after} == {48}

    results = json.loads((out / "results.json").read_text())
    ((judge_name, section),) = results["judges"].items()
    assert section["judge"]["kind"] == "rule" and section["judge"]["name"] == judge_name
    assert list(section["checkpoints"]) == ["global_step_10", "global_step_20"]
    for checkpoint in section["checkpoints"].values():
        assert set(checkpoint["benchmarks"]) == set(BENCHMARKS)
        for name, figures in checkpoint["benchmarks"].items():
            expected = min(6, len(read_jsonl(out / "generations" / "global_step_20" / f"{name}.jsonl")))
            assert figures["n"] == expected > 0, name
            assert "safety_score" in figures and "helpfulness_score" in figures
        assert "safety_score" in checkpoint["average"]
    report = (out / "report.md").read_text()
    assert "global_step_20" in report and judge_name in report
    assert list(out.glob("*.png")), "the report's plots"
    wandb_runs = list((out / "wandb").glob("offline-run-*"))
    assert wandb_runs, "a W&B offline run"
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".jsonl", ".md", ".yaml", ".log", ".wandb", ".txt"}:
            assert SECRET not in path.read_text(errors="replace"), path

    # 3. Judged again by another judge: no generation, a separate section, never one table.
    with FakeJudgeServer() as server:
        again = subprocess.run(
            eval_command(
                out,
                run_dir,
                "saferl.reward.judge.kind=openai",
                f"saferl.reward.judge.openai.base_url={server.base_url}",
                "saferl.reward.judge.openai.model=fake-72b",
            ),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert " to generate" in again.stdout and ", 0 to generate" in again.stdout
    assert all(", 0 to generate" in line for line in again.stdout.splitlines() if " to generate" in line)
    results = json.loads((out / "results.json").read_text())
    assert len(results["judges"]) == 2
    kinds = sorted(s["judge"]["kind"] for s in results["judges"].values())
    assert kinds == ["openai", "rule"]
