"""What the console shows of a training run (`saferl.console`), on lines a real `+exp=tiny` run printed
(Ray's prefixes and colour codes included): progress, validations and errors are kept, the rest goes to the
run's log only. The whole run's console is counted in tests/test_train.py."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest
from test_run_summary import record, write_validation

from saferl.console import (
    ConsoleFilter,
    FilteredStream,
    filtered_console,
    parse,
    step_metrics,
)
from saferl.run_summary import validation_lines

CYAN, RESET = "\x1b[36m", "\x1b[0m"
RUNNER = f"{CYAN}(TaskRunnerV1 pid=2474){RESET} "
# Printed by a real tiny run (stop 26), one per kind of noise.
NOISE = [
    f"{CYAN}(AgentLoopWorkerTQ pid=2913){RESET} WARNING:target_num_threads 8 should not exceed total "
    "physical CPU cores 2. Setting to 2.",
    f"{CYAN}(SimpleStorageUnit pid=2573){RESET} 2026-12-02 02:36:35,661 - WARNING - transfer_queue.utils.common"
    " - target_num_threads 8 should not exceed total physical CPU cores 2. Setting to 2.",
    f"{CYAN}(AgentLoopWorkerTQ pid=21259){RESET} WARNING:2026-12-02 03:36:47,752:[TQ_STORAGE_83019e42]: heavy "
    "put to TQ_STORAGE_UNIT_bf8a2de2 at 192.0.2.2:41781 samples=1 fields=['num_turns'] serialized_mb=0.1 "
    "elapsed=5.21s",
    f"{CYAN}(WorkerDict pid=28977){RESET} WARNING:2026-12-02 04:43:35,009:`torch_dtype` is deprecated! Use "
    "`dtype` instead!",
    RUNNER + "{'actor_rollout_ref': {'actor': {'_target_': 'verl.workers.config.FSDPActorConfig',",
    RUNNER + "                                 'calculate_entropy': False,",
    RUNNER + "(\"Initial validation metrics: {'val-core/qi_safe_10k/reward/mean@1': \"",
    RUNNER + " \"np.float64(2.1416667016843953), 'val-aux/qi_safe_10k/score/mean@1': \"",
    RUNNER
    + "/work/main/.venv/lib/python3.11/site-packages/verl/trainer/ppo/v1/trainer_base.py:123: UserWarning: "
    "Disabled critic as algorithm.adv_estimator != gae. If it is not intended, please set critic.enable=True",
    RUNNER + "  self.use_critic = need_critic(self.config)",
    RUNNER + "INFO:2026-12-02 02:36:06,973:Total training steps: 4",
    "2026-12-02 02:35:41,741\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled for "
    "this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    "2026-12-02 02:35:46,371\tINFO worker.py:2029 -- Started a local Ray instance.",
    "[2026-12-02 02:35:41,716][verl.plugin.platform.platform_manager][INFO] - Platform override from "
    "VERL_PLATFORM: cpu",
    "ray init kwargs: {'num_cpus': 8, 'runtime_env': {'env_vars': {'NCCL_DEBUG': 'WARN'}}}",
    RUNNER + "Training Progress:  25%|██▌       | 1/4 [00:05<00:16,  5.47s/it]",
    f"{CYAN}(HFServer pid=2792){RESET} Loading weights: 100%|██████████| 56/56 [00:00<00:00, 23120.49it/s] "
    "[repeated 4x across cluster] (Ray deduplicates logs by default. Set RAY_DEDUP_LOGS=0 to disable.)",
]
INFO_RECORD = next(line for line in NOISE if "Total training steps" in line)
RAY_INFO = next(line for line in NOISE if "Started a local Ray instance" in line)
KEPT = [
    "saferl: verl sync trainer (TaskRunnerV1), platform cpu",
    "[2026-12-02 02:35:00,793][saferl.train][INFO] - tiny model (bpe): /tmp/saferl-cache/models/tiny",
    f"{CYAN}(WorkerDict pid=2686){RESET} WARNING:2026-12-02 02:36:14,266:reward function returned NaN",
    f"{CYAN}(raylet){RESET} A worker died or was killed while executing a task by an unexpected system error.",
    RUNNER + "ERROR:2026-12-02 02:36:27,646:checkpoint engine failed",
]
STEP_1 = (
    RUNNER + "step:1 - rollout/reflect_rate:0.375 - rollout/correction_success_rate:0.0 - critic/score/mean:"
    "2.7178125381469727 - num_turns/min:np.int32(2) - num_turns/mean:np.float64(2.75) - timing_s/step:5.25"
)
STEP_0 = RUNNER + "step:0 - val-core/qi_safe_10k/reward/mean@1:np.float64(2.1416667016843953)"


def a_filter(validation_lines=lambda step: [f"validation {step}"], **kwargs) -> ConsoleFilter:
    return ConsoleFilter(
        total_steps=kwargs.pop("total_steps", 80), validation_lines=validation_lines, **kwargs
    )


def test_noise_goes_to_the_log_only() -> None:
    """In the order a run prints it: a continuation line (indented) goes where its first line went."""
    console_filter = a_filter()
    assert {line: console_filter.feed(line) for line in NOISE} == {line: [] for line in NOISE}


@pytest.mark.parametrize("line", KEPT)
def test_progress_warnings_and_errors_are_shown(line: str) -> None:
    assert a_filter().feed(line) == [line]


def test_full_shows_everything() -> None:
    console_filter = a_filter(show_all=True)
    assert [console_filter.feed(line) for line in NOISE] == [[line] for line in NOISE]


def test_verls_step_line_becomes_one_line_with_that_steps_figures() -> None:
    step, metrics = step_metrics(parse(STEP_1).message)
    assert (
        step == 1
        and metrics["num_turns/mean"] == 2.75
        and metrics["critic/score/mean"] == pytest.approx(2.7178125)
    )
    times = iter([100.0, 130.0])
    console_filter = a_filter(clock=lambda: next(times))
    assert console_filter.feed(STEP_1) == ["saferl: step 1/80: score 2.72, reflected 38%, 5.2 s/step"]
    # the time left: the wall clock's rate since the first step (30 s a step here), not timing_s/step
    assert console_filter.feed(STEP_1.replace("step:1 ", "step:2 ")) == [
        "saferl: step 2/80: score 2.72, reflected 38%, 5.2 s/step, ~39 min left"
    ]


def test_a_validation_step_adds_the_validations_lines_and_step_zero_has_no_step_line() -> None:
    asked = []

    def lines(step: int) -> list[str]:
        asked.append(step)
        return [f"saferl: validation at step {step}"]

    assert a_filter(lines).feed(STEP_0) == ["saferl: validation at step 0"]
    step_2 = STEP_1.replace("step:1 -", "step:2 -") + " - val-core/qi_safe_10k/reward/mean@1:1.5"
    shown = a_filter(lines).feed(step_2)
    assert shown[0].startswith("saferl: step 2/80: score 2.72") and shown[1:] == [
        "saferl: validation at step 2"
    ]
    assert asked == [0, 2]


def test_a_workers_traceback_is_shown_whole_and_what_follows_is_filtered_again() -> None:
    console_filter = a_filter()
    traceback = [
        RUNNER + "Traceback (most recent call last):",
        RUNNER + '  File "/work/main/rollout/reflect_loop.py", line 120, in run',
        RUNNER + "    raise RolloutFailedError(message)",
        RUNNER + "rewards.judges.RolloutFailedError: openai judge at http://127.0.0.1:9/v1 refused",
    ]
    assert [console_filter.feed(line) for line in traceback] == [[line] for line in traceback]
    assert console_filter.feed(INFO_RECORD) == []  # the next INFO record from that process


def test_a_continuation_follows_its_first_line_per_process() -> None:
    console_filter = a_filter()
    console_filter.feed(RUNNER + "WARNING:2026-12-02:judge slow")
    other = f"{CYAN}(WorkerDict pid=1){RESET} "
    console_filter.feed(other + "INFO:2026-12-02:loaded")
    assert console_filter.feed(RUNNER + "  second line of the warning") == [
        RUNNER + "  second line of the warning"
    ]
    assert console_filter.feed(other + "  second line of the info") == []


def test_the_stream_logs_everything_and_shows_a_kept_bar_as_it_redraws() -> None:
    console, log = io.StringIO(), io.StringIO()
    stream = FilteredStream(console, log, a_filter())
    stream.write(RAY_INFO + "\n" + KEPT[0] + "\nwarm start (SFT):   0%|   | 0/300")
    stream.write("\rwarm start (SFT):  50%|   | 150/300\rwarm start (SFT): 100%|   | 300/300\n")
    stream.write("\rLoading weights: 100%|   | 56/56\n")
    stream.flush()
    assert console.getvalue() == (
        KEPT[0] + "\nwarm start (SFT):   0%|   | 0/300\rwarm start (SFT):  50%|   | 150/300"
        "\rwarm start (SFT): 100%|   | 300/300\n"
    )
    assert log.getvalue().splitlines() == [
        RAY_INFO,
        KEPT[0],
        "warm start (SFT):   0%|   | 0/300",
        "warm start (SFT):  50%|   | 150/300",
        "warm start (SFT): 100%|   | 300/300",
        "Loading weights: 100%|   | 56/56",
    ]


def test_the_console_covers_prints_and_logging_handlers_and_appends_to_the_runs_log(tmp_path: Path) -> None:
    real = io.StringIO()
    handler = logging.StreamHandler(real)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    logging.getLogger("saferl.test_console").addHandler(handler)
    logging.getLogger("saferl.test_console").setLevel(logging.INFO)
    saved = sys.stdout
    sys.stdout = real
    try:
        for launch in range(2):
            with filtered_console(
                tmp_path, "quiet", total_steps=2, validation_lines=lambda step: []
            ) as console:
                print("ray init kwargs: {}")
                print("saferl: kept")
                logging.getLogger("saferl.test_console").warning("a WARNING record, kept")
                logging.getLogger("saferl.test_console").info("INFO: dropped")
                console.say([f"| table | {launch} |"])
    finally:
        sys.stdout = saved
        logging.getLogger("saferl.test_console").removeHandler(handler)
    shown = ["saferl: kept", "WARNING:saferl.test_console:a WARNING record, kept"]
    assert real.getvalue().splitlines() == [*shown, "| table | 0 |", *shown, "| table | 1 |"]
    log = (tmp_path / "logs" / "console.log").read_text()
    assert log.count("=== saferl.train launch at") == 2 and log.count("ray init kwargs") == 2
    assert log.count("INFO: dropped") == 2 and log.count("| table |") == 2
    assert handler.stream is real  # given back


def test_a_validation_line_has_the_summarys_figures_and_the_collapse_alarm(tmp_path: Path) -> None:
    write_validation(tmp_path, 0, [record("unsafe", "harmful")] * 8 + [record("safe", "")] * 8)
    write_validation(tmp_path, 20, [record("unsafe", "bad_format")] * 8 + [record("safe", "bad_format")] * 8)
    assert validation_lines(tmp_path, 0) == [
        "saferl: validation at step 0: harmful 100%, benign refusal 0%, format 100%, safety 5.00, helpfulness 5.00"
    ]
    line, alarm = validation_lines(tmp_path, 20)
    assert line.startswith("saferl: validation at step 20: harmful 0%, benign refusal 0%, format 0%")
    assert alarm.startswith("saferl: WARNING: FORMAT COLLAPSE at step 20")
    assert "no trajectories recorded" in validation_lines(tmp_path, 40)[0]


class _Buffered(io.StringIO):
    """A console that, like a pipe or a file, shows only what was flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed = ""

    def flush(self) -> None:
        self.flushed = self.getvalue()


def test_a_kept_line_is_flushed_at_once_as_a_pipe_or_slurm_log_needs() -> None:
    console = _Buffered()
    stream = FilteredStream(console, io.StringIO(), a_filter())
    stream.write(KEPT[0] + "\n")
    assert console.flushed == KEPT[0] + "\n"
    stream.write(STEP_1 + "\n")
    assert console.flushed.endswith("saferl: step 1/80: score 2.72, reflected 38%, 5.2 s/step\n")
