"""`python -m saferl.train +exp=tiny_smoke` end to end, as a user runs it: verl's own trainer (TaskRunnerV1,
PPOTrainerSync, FSDP2 actor and reference, TransferQueue) on CPU through saferl's platform and HF rollout
backend, with saferl's parts (`safe_reflect`, `saferl_safety`, `QISafeDataset`, `saferl_grpo`,
`SaferlReplayBuffer`); a real Ray, the tiny model, the rule judge, W&B offline. Then a run killed with
SIGKILL mid-training and started again with the same command.

The smoke experiment is `tiny` cut short (2 steps); the learning run itself is a benchmark
(`python -m benchmarks.train`), not a test.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saferl.resources import ROOT as REPO_ROOT

pytestmark = pytest.mark.slow

SECRETS = {
    "SAFERL_JUDGE_API_KEY": "sk-judge-never-logged-4242",
    "WANDB_API_KEY": "wandb-key-never-logged-4242",
}
ROLLOUT_METRICS = ("rollout/reflect_rate", "rollout/correction_success_rate")
REWARD_METRICS = (
    *(
        f"reward/{c}/mean"
        for c in ("safety_awareness", "helpfulness", "reasoning_coherence", "visual_grounding", "format")
    ),
    "reward/hallucination_rate",
    "reward/contradiction_rate",
    "reward/judge_failures",
)
VERL_METRICS = (
    "actor/pg_loss",
    "actor/kl_loss",
    "critic/score/mean",
    "response_length/mean",
    "timing_s/step",
    "training/rollout_probs_diff_mean",  # the HF server's log probs against the FSDP actor's
)
# Validation figures: the reward's per-sample outcomes, averaged by verl over the samples they apply to.
VAL_METRICS = tuple(
    f"val-aux/qi_safe_10k/{name}/mean@1"
    for name in ("harmful_rate", "refusal_rate", "format_rate", "criterion/safety_awareness")
)


def command(run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "saferl.train",
        "+exp=tiny_smoke",
        f"trainer.default_local_dir={run_dir}",
        *overrides,
    ]


def environment(saferl_cache: Path) -> dict[str, str]:
    return {**os.environ, "SAFERL_CACHE_DIR": str(saferl_cache), "WANDB_MODE": "offline", **SECRETS}


def train(env: dict[str, str], run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python -m saferl.train +exp=tiny_smoke` in `run_dir`, to completion, its output captured."""
    return subprocess.run(
        command(run_dir, *overrides), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )


def metrics_by_step(run_dir: Path) -> dict[int, dict[str, float]]:
    """Every launch's metrics; a step logged twice (in one launch or across launches) is an error."""
    steps: dict[int, dict[str, float]] = {}
    for path in sorted(
        (run_dir / "metrics").glob("from_step_*.jsonl"), key=lambda p: int(p.stem.split("_")[-1])
    ):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            assert record["step"] not in steps, f"step {record['step']} logged twice ({path.name})"
            steps[record["step"]] = record["data"]
    return steps


def data_order(run_dir: Path) -> dict[int, list[str]]:
    order: dict[int, list[str]] = {}
    for line in (run_dir / "data_order.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record["step"] not in order, f"step {record['step']} recorded twice"
        order[record["step"]] = record["sample_ids"]
    return order


@pytest.fixture(scope="module")
def smoke_run(saferl_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    result = train(environment(saferl_cache), run_dir, "trainer.logger=[console,file,wandb]")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, result.stdout + result.stderr


def test_the_run_is_verls_trainer_and_leaves_its_outputs(smoke_run) -> None:
    run_dir, output = smoke_run
    assert "saferl: verl sync trainer (TaskRunnerV1), platform cpu" in output
    assert "saferl: finished 2 steps" in output
    full_log = (run_dir / "logs" / "console.log").read_text()
    assert "(TaskRunnerV1 pid=" in full_log  # verl's task runner actor did the training
    assert "Training Progress" in full_log  # verl's progress bar
    # ... and ends saying what the validations (steps 0 and 2) show, and where the best checkpoint is.
    assert (
        "saferl: what the validations say" in output
        and "| first | 0 |" in output
        and "| last | 2 |" in output
    )
    assert re.search(r"saferl: best validation at step (0|2); its checkpoint: ", output)
    config = (run_dir / "config.yaml").read_text()  # the resolved config
    assert "${" not in config and "SaferlReplayBuffer" in config
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    for step in (1, 2):
        actor = run_dir / f"global_step_{step}" / "actor"
        assert sorted(p.name for p in actor.glob("model_world_size_*_rank_*.pt")) == [
            "model_world_size_2_rank_0.pt",  # verl's FSDP checkpoint: a shard per worker (two fake GPUs)
            "model_world_size_2_rank_1.pt",
        ]
        assert (actor / "huggingface" / "config.json").is_file()  # and the HF policy beside it
        assert (run_dir / f"global_step_{step}" / "data.pt").is_file()  # the data loader's position
    assert (run_dir / "warm_start" / "config.json").is_file()
    assert sorted(data_order(run_dir)) == [1, 2]
    assert all(len(ids) == 4 and len(set(ids)) == 4 for ids in data_order(run_dir).values())


def test_the_console_shows_a_line_a_step_a_line_a_validation_and_the_summary(smoke_run) -> None:
    """Issue 19: a run's progress, validations and errors, not verl's and Ray's INFO (which a run printed
    6,604 lines of). Everything printed is in the run's log, which holds many times what the console does."""
    run_dir, output = smoke_run
    # stdout then stderr; the warm start's progress bar is on stderr (its redraws read as lines here: the
    # captured text has universal newlines)
    lines = output.rstrip("\n").split("\n")
    assert any(line.startswith("warm start (SFT):") for line in lines)
    lines = [line for line in lines if line and not line.startswith("warm start (SFT):")]
    steps = [int(m[1]) for line in lines if (m := re.match(r"saferl: step (\d+)/2: score -?\d", line))]
    validations = [
        int(m[1]) for line in lines if (m := re.match(r"saferl: validation at step (\d+): harmful", line))
    ]
    assert steps == [1, 2] and validations == [0, 2], output
    # between one step's line and the next: that step's validation at most
    first, last = (
        next(i for i, line in enumerate(lines) if line.startswith(f"saferl: step {s}/")) for s in (1, 2)
    )
    assert last - first <= 2, "\n".join(lines[first : last + 1])
    # before training: the setup (model, data, warm start, config, trainer) and the first validation;
    # after it: the finish line and the summary (heading, 5 table rows, best checkpoint)
    assert first <= 10, "\n".join(lines[:first])
    assert len(lines) - last <= 10, "\n".join(lines[last:])
    assert not [line for line in lines if "WARNING" in line and not line.startswith("saferl:")], output
    full_log = (run_dir / "logs" / "console.log").read_text().splitlines()
    assert len(full_log) > 20 * len(lines)


def test_metrics_carry_the_issue_names(smoke_run) -> None:
    run_dir, _ = smoke_run
    steps = metrics_by_step(run_dir)
    assert sorted(steps) == [0, 1, 2]
    assert set(VAL_METRICS) <= set(steps[0]) and set(VAL_METRICS) <= set(steps[2])
    for step in (1, 2):
        missing = {*REWARD_METRICS, *VERL_METRICS, "rollout/reflect_rate"} - set(steps[step])
        assert not missing, missing
        # the rollout server served the weights the actor had: its log probs match the FSDP actor's
        assert steps[step]["training/rollout_probs_diff_mean"] < 1e-3
    # the warm-started tiny policy still answers unsafe prompts unsafely, so reflection fires
    assert any(steps[s]["rollout/reflect_rate"] > 0 for s in (1, 2))
    assert any("rollout/correction_success_rate" in steps[s] for s in (1, 2))
    for s in (0, 2):
        assert 0.0 <= steps[s]["val-aux/qi_safe_10k/harmful_rate/mean@1"] <= 1.0
        # validation scores the policy's own answer (single_turn_agent: 2 turns), not a reflection
        assert steps[s]["val-aux/num_turns/max"] == 2


def test_validation_samples_are_written(smoke_run) -> None:
    run_dir, _ = smoke_run
    for step in (0, 2):
        rows = [
            json.loads(x) for x in (run_dir / "val_samples" / f"step_{step}.jsonl").read_text().splitlines()
        ]
        assert 0 < len(rows) <= 4
        assert {"question", "response", "criteria", "score", "safety_label"} <= set(rows[0])


def test_wandb_offline_run_has_metrics_and_trajectory_tables(smoke_run) -> None:
    run_dir, _ = smoke_run
    [wandb_run] = list((run_dir / "wandb").glob("offline-run-*"))
    assert list(wandb_run.glob("*.wandb"))  # the run's local record
    tables = sorted(wandb_run.rglob("trajectories_*.table.json"))
    assert len(tables) == 2  # one per validation (step 0 and step 2)
    table = json.loads(tables[0].read_text())
    assert {"image", "question", "response", "reflection", "correction", "criteria", "score"} <= set(
        table["columns"]
    )
    # the prompt images beside the table (offline, wandb keeps a run table's images only in an artifact)
    assert len(list((wandb_run / "files" / "media" / "images").rglob("*.png"))) >= 2


def test_no_secret_reaches_any_file(smoke_run) -> None:
    run_dir, output = smoke_run
    secrets = list(SECRETS.values())
    assert not any(s in output for s in secrets)
    for path in run_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path


def test_sigkill_then_restart_finishes_without_repeats_or_gaps(saferl_cache: Path, tmp_path: Path) -> None:
    steps, quiet = (
        "trainer.total_training_steps=4",
        ["trainer.val_before_train=false", "trainer.test_freq=-1", "trainer.logger=[console,file]"],
    )
    env = environment(saferl_cache)
    reference = tmp_path / "uninterrupted"
    done = train(env, reference, steps, *quiet)
    assert done.returncode == 0, done.stderr[-3000:]

    run_dir = tmp_path / "killed"
    tracker = run_dir / "latest_checkpointed_iteration.txt"
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(
        command(run_dir, steps, *quiet),
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not (tracker.is_file() and tracker.read_text().strip() == "2"):
        assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint of step 2 in time"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the whole job: driver, Ray, servers (as SLURM or the OOM killer)
    process.wait()
    killed_at = int(tracker.read_text().strip())
    assert killed_at < 4

    resumed = train(env, run_dir, steps, *quiet)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # From the newest checkpoint, or the one before when the kill came between saving a step and logging
    # it (verl saves first): that step is then trained and logged again, not lost.
    [resumed_at] = [int(m) for m in re.findall(r"saferl: resuming from \S+ at step (\d+)", resumed.stdout)]
    assert resumed_at in (killed_at, killed_at - 1)
    assert f"resuming from {run_dir / f'global_step_{resumed_at}'}" in resumed.stdout
    assert "saferl: finished 4 steps" in resumed.stdout
    assert tracker.read_text().strip() == "4"
    # Every step trained once on exactly the prompts the uninterrupted run used at that step, and no
    # step is logged twice (metrics_by_step and data_order assert it).
    assert data_order(run_dir) == data_order(reference)
    assert sorted(metrics_by_step(run_dir)) == [1, 2, 3, 4]
    assert (run_dir / "metrics" / f"from_step_{resumed_at}.jsonl").is_file()  # the second launch's
    assert (run_dir / "metrics" / "from_step_0.jsonl").is_file()  # the first launch's, kept


def test_a_judge_outage_stops_training_naming_the_judge(saferl_cache: Path, tmp_path: Path) -> None:
    """verl's sync buffer replaces a failed prompt group with new prompts; a judge that is down fails every
    group, so training would go on without a reward. saferl's buffer stops it, naming the endpoint."""
    with socket.socket() as s:  # a port nothing listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    result = train(
        environment(saferl_cache),
        run_dir,
        "saferl.reward.judge.kind=openai",
        f"saferl.reward.judge.openai.base_url=http://127.0.0.1:{port}/v1",
        "saferl.reward.judge.openai.max_retries=0",
        "saferl.reward.judge.openai.timeout_s=2",
        "saferl.reward.faults.min_samples=2",
        "trainer.val_before_train=false",
        "trainer.logger=[console,file]",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "RolloutFailedError" in output, output[-3000:]
    assert f"openai judge at http://127.0.0.1:{port}/v1" in output
    assert not (run_dir / "global_step_1").exists()  # no step trained on a batch without its reward


def test_excluded_judgements_leave_the_batch_and_no_metric_is_nan(saferl_cache: Path, tmp_path: Path) -> None:
    """`faults.on_failure=exclude`: a trajectory whose reward judgement failed carries a NaN reward. It
    must weigh nothing (no advantage, no place in its group) and reach no metric as a NaN.

    The loopback FAKE judge (standing in for a served 72B judge) answers 503 to its first 12 requests.
    Step 1 makes 16: each of its 8 trajectories is checked by the loop, then judged for the reward, so
    between 4 and 6 reward judgements fail, a partial exclusion whatever the order."""
    from judge_server import FakeJudgeServer

    run_dir = tmp_path / "run"
    with FakeJudgeServer(served_model="fake-judge") as judge:
        judge.script([{"status": 503}] * 12)
        result = train(
            environment(saferl_cache),
            run_dir,
            "saferl.reward.judge.kind=openai",
            f"saferl.reward.judge.openai.base_url={judge.base_url}",
            "saferl.reward.judge.openai.model=fake-judge",
            "saferl.reward.judge.openai.max_retries=0",
            "saferl.reward.faults.min_samples=1000",
            "trainer.val_before_train=false",
            "trainer.total_training_steps=1",
            "trainer.test_freq=1",
            "trainer.logger=[console,file]",
        )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    step = metrics_by_step(run_dir)[1]
    assert 4 <= step["reward/judge_failures"] <= 6
    nan = sorted(k for k, v in step.items() if isinstance(v, float) and math.isnan(v))
    assert not nan, nan
    assert "critic/score/mean" in step and "val-core/qi_safe_10k/reward/mean@1" in step
    assert len(data_order(run_dir)[1]) == 4  # the step still drew and recorded its 4 prompts
