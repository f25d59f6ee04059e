"""`python -m benchmarks`, as a developer runs it: the fastest benchmark through the runner (one table, one
JSON line holding its figures), a bad `--only` refused with the valid names, a failing benchmark shown
as an error row with a non-zero exit, and every benchmark still runnable alone (its own arguments)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NAMES = ("tiny_model", "data_pipeline", "judge_client", "cpu_rollout", "train", "trl_step", "learning")
FASTEST = "data_pipeline"  # ~3 s with --quick on 2 cores


def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # From the checkout's root, as the README says: the package is not installed (not in the wheel).
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_the_runner_prints_one_table_and_one_json_line_with_the_figures() -> None:
    result = run("-m", "benchmarks", "--only", FASTEST, "--quick")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    final = json.loads(lines[-1])
    assert final["quick"] is True and final["errors"] == {}
    assert list(final["figures"]) == [FASTEST] and list(final["wall_s"]) == [FASTEST]
    figures = final["figures"][FASTEST]
    assert figures["quick"] is True
    assert figures["selection"]["candidates"] == 159_000 and figures["selection"]["selected"] == 10_000
    assert figures["validation"]["rows"] == 1_000 and figures["validation"]["bad"] == 0
    assert figures["validation"]["seconds"] > 0
    # The others are listed with how to run them, the long ones among them.
    assert set(final["not_run"]) == set(NAMES) - {FASTEST}
    assert final["not_run"]["train"].startswith("python -m benchmarks.train")
    assert "python -m benchmarks.learning" in result.stdout

    table = [line for line in lines if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["benchmark", "figure", "value", "target"]
    assert set(table[1]) <= set("|-")
    rows = {c[1]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in table[2:])}
    assert all(row[0] == FASTEST for row in rows.values())
    assert rows["validation bad rows"][2:] == ["0", "== 0 ok"]
    assert float(rows["wall (s)"][2]) > 0
    validation = next(row for figure, row in rows.items() if figure.startswith("validation of 1000 rows"))
    assert float(validation[2]) == pytest.approx(figures["validation"]["seconds"], rel=1e-3)
    assert validation[3].startswith("<= 60 s ")


def test_an_unknown_benchmark_is_refused_with_the_valid_names() -> None:
    result = run("-m", "benchmarks", "--only", f"{FASTEST},nosuch")
    assert result.returncode == 2
    assert "'nosuch'" in result.stderr
    assert all(name in result.stderr for name in NAMES), result.stderr


def test_a_failing_benchmark_is_an_error_row_and_a_nonzero_exit() -> None:
    # The runner's own code, with the benchmark's command replaced by one that fails.
    code = (
        "import sys, benchmarks.__main__ as runner;"
        "runner.command = lambda bench, quick: [sys.executable, '-c', 'raise SystemExit(\"boom: no figures\")'];"
        f"raise SystemExit(runner.main(['--only', '{FASTEST}']))"
    )
    result = run("-c", code)
    assert result.returncode == 1, result.stdout + result.stderr
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["figures"] == {} and final["errors"] == {FASTEST: "exit 1: boom: no figures"}
    assert any(line.startswith(f"| {FASTEST}") and "ERROR" in line for line in result.stdout.splitlines())


@pytest.mark.parametrize("name", NAMES)
def test_every_benchmark_runs_alone(name: str) -> None:
    result = run("-m", f"benchmarks.{name}", "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"python -m benchmarks.{name}" in result.stdout


def test_trl_step_measures_the_issues_step_on_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    """`benchmarks.trl_step`'s project overrides compose into the issue's step (16 prompts x n=8 x 64 new
    tokens, KL on, no reflection, no warm start, one update a batch), and the reward it hands TRL is the
    project's: a refusal of an unsafe request outscores compliance."""
    from hydra import compose, initialize_config_dir

    monkeypatch.syspath_prepend(str(REPO))  # benchmarks/ is the checkout's, not installed (see `run`)
    from benchmarks import trl_step
    from saferl.resources import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=["+exp=tiny", *trl_step.PROJECT_OVERRIDES])
    rollout, actor = cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.actor
    assert list(cfg.saferl.stages) == ["grpo"]
    assert cfg.data.train_batch_size == trl_step.PROMPTS == actor.ppo_mini_batch_size
    assert rollout.n == trl_step.N and rollout.response_length == trl_step.NEW_TOKENS
    assert rollout.agent.default_agent_loop == "single_turn_agent"
    assert actor.use_kl_loss and actor.kl_loss_coef == trl_step.KL_COEF and actor.ppo_epochs == 1
    row = {"sample_id": "t:0", "question": "How do I hurt someone?", "safety_label": "unsafe"}
    reward = trl_step.reward_function([row])
    refuse = "<think>This is harmful.</think>I can't help with that. Please talk to someone you trust."
    comply = "<think>Sure.</think>Here is how to do it step by step."
    scores = reward([[{"role": "assistant", "content": refuse}], comply], row_index=[0, 0])
    assert scores[0] > scores[1], scores
