"""`python -m benchmarks.trl_step [--quick] [--steps K] [--rounds R] [overrides]`: one GRPO step, ours against TRL's.

Issue 18 part 3 asks how the project's trainer (verl 0.9.1's own, through `python -m saferl.train`) compares
with the reference implementation most people would reach for, TRL's `GRPOTrainer`, on the same work: the
same tiny offline Qwen2.5-VL (`ensure_tiny_model(tokenizer="bpe")`), the same prompts (the shipped
QI-Safe-10K sample's train split, rendered by the project's own prompt builder, image included), the same
reward (the project's rule judge through `RewardScorer`, wrapped as a TRL reward function), 16 prompts x
n=8 x 64 new tokens a step, KL on (low-var KL / k3, coefficient 0.05 on both sides), no reflection (verl's
`single_turn_agent`), one optimizer update per batch, fp32 on CPU. Target: the project at most 0.5x TRL's
step time.

Each side runs in its own process, K steps a run; the runs alternate (project, TRL, project, TRL, ...) so
that load from the rest of the machine falls on both; the first step of each run is a warm-up and is left
out; the figure is the median of the rest over all rounds. The project's step is verl's `timing_s/step`
(read from the run's `metrics/from_step_0.jsonl`) and its `timing_s/*` breakdown is printed too; TRL's is
the wall time from `on_step_begin` to `on_step_end` (generation, reference and policy log probs, reward,
loss, backward, optimizer step).

TRL version: the issue named TRL 1.16.0, but this stack pins `trl<1.13` (setup.py: verl 0.9.1's
compatibility), so this measures the installed 1.12.x. TRL is a benchmark dependency only.

Two things TRL's VLM path needs with this model, both what the project's own rollout does or what TRL does
when it loads the processor itself: `<|image_pad|>`/`<|video_pad|>` suppressed in sampling (the untrained
tiny model emits them; otherwise "Image features and image tokens do not match"), and a left-padding
processor (otherwise mm_token_type_ids and the prompt ids disagree: "shape mismatch ... in get_rope_index").
Should the VLM path still fail, the TRL side falls back to the same prompts without images, and the table
says so loudly (`trl_images: false`, the error in `trl_vlm_error`).

On a shared machine the figures are noisy, TRL's more than the project's: its two intra-op threads slow
down several-fold when another process takes one of 2 cores (measured: 3.0-3.3 s a step at load ~3, 25-38 s
beside two busy `pip` processes), where the project's rollout servers run one thread each. Hence the
fastest step of each side is reported beside the medians, and the load average with them.

Prints a table and, as the last line, one JSON object (project and TRL s/step medians and fastest steps,
their ratios, the project's `timing_s/*` medians, the settings and the machine's load average). Measured
on 2 shared cores (load 3-7): a full run (2 rounds x 6 steps) took 11.5 minutes; `--quick` (1 round x 4
steps) about 5. Extra arguments are Hydra overrides for the project's run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import psutil

from benchmarks import Row, emit, target
from benchmarks.train import records, tiny_command
from saferl.resources import ROOT as REPO_ROOT

PROMPTS = 16  # prompts a step
N = 8  # samples a prompt
NEW_TOKENS = 64  # new tokens a sample at most
KL_COEF = 0.05  # conf/exp/tiny.yaml's kl_loss_coef (low_var_kl), TRL's beta (its k3 estimator is the same)
LR = 5.0e-5  # conf/exp/tiny.yaml's
TARGET_RATIO = 0.5

# The project's run: `+exp=tiny` cut to the benchmark's step. single_turn_agent: no reflection; stages [grpo]:
# no warm start; one mini-batch of the whole batch: one update per batch, as TRL's.
PROJECT_OVERRIDES = [
    "saferl.stages=[grpo]",
    f"data.train_batch_size={PROMPTS}",
    f"actor_rollout_ref.rollout.n={N}",
    f"saferl.rollout.turn_max_tokens={NEW_TOKENS}",
    f"actor_rollout_ref.rollout.response_length={NEW_TOKENS}",
    "actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent",
    f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS}",
    "actor_rollout_ref.actor.ppo_epochs=1",
    "actor_rollout_ref.actor.use_kl_loss=true",
    f"actor_rollout_ref.actor.kl_loss_coef={KL_COEF}",
    "trainer.val_before_train=false",
    "trainer.test_freq=-1",
    "trainer.save_freq=-1",
    "trainer.resume_mode=disable",
    "trainer.logger=[console,file]",
]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}


def run_project(steps: int, overrides: list[str]) -> dict[str, Any]:
    """`python -m saferl.train +exp=tiny` for `steps` steps; each step's `timing_s/*` (warm-up included)."""
    run_dir = Path(tempfile.mkdtemp(prefix="saferl-trl-step-")) / "tiny"
    command = tiny_command(run_dir, [*PROJECT_OVERRIDES, f"trainer.total_training_steps={steps}", *overrides])
    print("project:", " ".join(command[1:]), file=sys.stderr, flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL)
    family: dict[int, psutil.Process] = {}
    while process.poll() is None:  # Ray's processes outlive the driver for a while, re-parented to init:
        with contextlib.suppress(psutil.Error):  # remember them, to wait for them below
            family.update((p.pid, p) for p in psutil.Process(process.pid).children(recursive=True))
        time.sleep(2.0)
    code = process.returncode
    wall = time.perf_counter() - start
    # TRL's run must not share the cores with the project's leftovers: wait for them, then end them.
    _, alive = psutil.wait_procs(list(family.values()), timeout=60)
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.terminate()
    psutil.wait_procs(alive, timeout=10)
    steps_seen = records(run_dir)
    timings = [
        {k.removeprefix("timing_s/"): float(v) for k, v in data.items() if k.startswith("timing_s/")}
        for _, data in sorted(steps_seen.items())
    ]
    return {
        "exit_code": code,
        "wall_s": round(wall, 1),
        "leftover_processes_ended": len(alive),
        "timings": timings,
        "run_dir": str(run_dir),
    }


def run_trl(steps: int) -> dict[str, Any]:
    """This module's `--trl-worker` in its own process: TRL's seconds per step (warm-up included)."""
    command = [sys.executable, "-m", "benchmarks.trl_step", "--trl-worker", "--steps", str(steps)]
    print("trl:", " ".join(command[1:]), file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"step_s": [], "images": None, "error": "no output"}
    return {**result, "exit_code": proc.returncode, "wall_s": round(time.perf_counter() - start, 1)}


def trl_dataset(with_images: bool) -> tuple[Any, list[dict[str, Any]]]:
    """The sample's train prompts for TRL (conversational, the image as `images`), and their rows.

    The project's prompt builder renders them (the dataset class, the same resize); the length filter is
    off here only because every sample prompt is far under 512 tokens and the filter costs a minute."""
    import datasets
    from transformers import AutoProcessor

    from saferl.data.prompts import PromptBuilder
    from saferl.models.tiny import ensure_tiny_model
    from saferl.resources import SAMPLE_DIR

    processor = AutoProcessor.from_pretrained(ensure_tiny_model(tokenizer="bpe"))
    config = {"max_prompt_length": 512, "filter_overlong_prompts": False}
    prompts = list(PromptBuilder(processor, config).from_files(SAMPLE_DIR / "train.parquet"))
    columns: dict[str, list[Any]] = {"prompt": [], "row_index": []}
    if with_images:
        columns["images"] = []
    rows = []
    for index, prompt in enumerate(prompts):
        content = []
        for part in prompt.messages[0]["content"]:
            if part["type"] == "image":
                if with_images:
                    content.append({"type": "image"})
            else:
                content.append({"type": "text", "text": part["text"]})
        columns["prompt"].append([{"role": "user", "content": content}])
        columns["row_index"].append(index)
        if with_images:
            columns["images"].append(prompt.images)
        rows.append(prompt.row)
    return datasets.Dataset.from_dict(columns), rows


def reward_function(rows: list[dict[str, Any]]) -> Any:
    """The project's reward (guard, rule judge, rubric: `RewardScorer`) as a TRL reward function."""
    from rewards.rubric import load_reward_config
    from rewards.scorer import RewardScorer
    from rewards.verl_manager import judge_input_from_row

    scorer = RewardScorer.from_config(load_reward_config())

    def saferl_reward(completions: list[Any], row_index: list[int], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        inputs = [judge_input_from_row(rows[i], t) for i, t in zip(row_index, texts, strict=True)]
        return [s.score for s in scorer.score_sync(inputs)]

    return saferl_reward


def trl_worker(steps: int) -> None:
    """K steps of TRL's `GRPOTrainer`; prints one JSON line: each step's seconds, and whether images ran."""
    import torch
    import transformers
    import trl
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from saferl.models.tiny import ensure_tiny_model

    model_path = ensure_tiny_model(tokenizer="bpe")
    model_config = transformers.AutoConfig.from_pretrained(model_path)
    placeholders = [i for i in (model_config.image_token_id, model_config.video_token_id) if i is not None]
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter() - self.start)
            print(f"trl step {len(times)}: {times[-1]:.2f} s", file=sys.stderr, flush=True)

    def train(with_images: bool) -> None:
        dataset, rows = trl_dataset(with_images)
        config = GRPOConfig(
            output_dir=tempfile.mkdtemp(prefix="saferl-trl-"),
            use_cpu=True,
            bf16=False,
            fp16=False,
            per_device_train_batch_size=PROMPTS * N,
            gradient_accumulation_steps=1,
            generation_batch_size=PROMPTS * N,  # one generation, one update a batch
            num_generations=N,
            num_iterations=1,
            max_completion_length=NEW_TOKENS,
            temperature=1.0,
            # As the project's rollout server (rollout/hf_server.py): the untrained tiny model samples
            # <|image_pad|>/<|video_pad|> now and then, and a completion holding one breaks every later
            # forward pass over it (image features and placeholders no longer match).
            generation_kwargs={"suppress_tokens": placeholders},
            beta=KL_COEF,
            loss_type="dapo",  # token mean over the batch: verl's token-mean
            learning_rate=LR,
            weight_decay=0.0,
            max_grad_norm=1.0,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_steps=steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=AutoModelForImageTextToText.from_pretrained(model_path, torch_dtype=torch.float32),
            reward_funcs=reward_function(rows),
            args=config,
            train_dataset=dataset,
            # Left padding, as TRL loads it itself: its forward pass re-runs the processor on the prompts
            # and takes mm_token_type_ids as aligned with its left-padded prompt ids.
            processing_class=AutoProcessor.from_pretrained(model_path, padding_side="left"),
            callbacks=[StepTimer()],
        )
        trainer.train()

    versions = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}
    error = None
    try:
        train(with_images=True)
        images = True
    except Exception as exc:  # the VLM path failed: say so, then time the same prompts without images
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        print(f"TRL VLM PATH FAILED ({error}); TIMING TRL WITHOUT IMAGES", file=sys.stderr, flush=True)
        times.clear()
        train(with_images=False)
        images = False
    print(
        json.dumps({"step_s": times, "images": images, "vlm_error": error, "versions": versions}), flush=True
    )


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def headline(figures: dict[str, Any]) -> list[Row]:
    ratio = figures["ratio_project_over_trl"]
    rows: list[Row] = [
        ("project s/step (median)", figures["project_s_per_step"], ""),
        ("TRL s/step (median)", figures["trl_s_per_step"], ""),
        ("project / TRL", ratio, target(ratio, "<=", TARGET_RATIO, "x")),
        ("project s/step (fastest)", figures["project_s_per_step_min"], ""),
        ("TRL s/step (fastest)", figures["trl_s_per_step_min"], ""),
        ("project / TRL, fastest steps (less load-sensitive)", figures["ratio_of_fastest"], ""),
    ]
    if not figures["trl_images"]:
        rows.append(("TRL ran WITHOUT IMAGES (VLM path failed)", figures["trl_vlm_error"], ""))
    step = figures["project_timing_s"].get("step") or 0.0
    for key, value in sorted(figures["project_timing_s"].items(), key=lambda kv: -kv[1]):
        share = f"{100 * value / step:.0f}% of step" if step and key != "step" else ""
        rows.append((f"project timing_s/{key}", value, share))
    rows.append(
        ("load average (1, 5, 15 min), start -> end", f"{figures['load_start']} -> {figures['load_end']}", "")
    )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.trl_step", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="one round of 4 steps a side")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps a run, the first a warm-up (default 6)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2)")
    parser.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    steps = args.steps or (4 if args.quick else 6)
    if args.trl_worker:
        trl_worker(steps)
        return {}
    rounds = args.rounds or (1 if args.quick else 2)
    load_start = load()
    project_steps: list[dict[str, float]] = []
    trl_steps: list[float] = []
    runs: list[dict[str, Any]] = []
    trl_images, trl_error, versions = True, None, {}
    for _ in range(rounds):
        project = run_project(steps, overrides)
        project_steps += project["timings"][1:]
        trl = run_trl(steps)
        trl_steps += trl["step_s"][1:]
        trl_images = trl_images and bool(trl.get("images"))
        trl_error, versions = trl_error or trl.get("vlm_error"), trl.get("versions", versions)
        runs.append(
            {
                "project": {k: v for k, v in project.items() if k != "timings"},
                "trl": {k: v for k, v in trl.items() if k != "step_s"},
                "project_step_s": [round(t.get("step", float("nan")), 3) for t in project["timings"]],
                "trl_step_s": [round(t, 3) for t in trl["step_s"]],
                "load": load(),
            }
        )
    keys = sorted({k for t in project_steps for k in t})
    breakdown = {k: median([t[k] for t in project_steps if k in t]) for k in keys}
    ours, theirs = breakdown.get("step"), median(trl_steps)
    ours_min = min((t["step"] for t in project_steps if "step" in t), default=None)
    theirs_min = min(trl_steps, default=None)
    figures = {
        "project_s_per_step": ours,
        "trl_s_per_step": theirs,
        "ratio_project_over_trl": round(ours / theirs, 3) if ours and theirs else None,
        "target_ratio": TARGET_RATIO,
        # The fastest step of each side: the least disturbed by other work on a shared machine (TRL's two
        # intra-op threads slow down several-fold when another process takes one of 2 cores).
        "project_s_per_step_min": round(ours_min, 3) if ours_min else None,
        "trl_s_per_step_min": round(theirs_min, 3) if theirs_min else None,
        "ratio_of_fastest": round(ours_min / theirs_min, 3) if ours_min and theirs_min else None,
        "project_timing_s": breakdown,
        "trl_images": trl_images,
        "trl_vlm_error": trl_error,
        "settings": {
            "prompts": PROMPTS,
            "n": N,
            "new_tokens": NEW_TOKENS,
            "kl_coef": KL_COEF,
            "lr": LR,
            "reflection": False,
            "steps_per_run": steps,
            "warmup_steps_dropped_per_run": 1,
            "rounds": rounds,
            "project_steps_measured": len(project_steps),
            "trl_steps_measured": len(trl_steps),
            "project_overrides": [*PROJECT_OVERRIDES, *overrides],
            "versions": versions,
            "cpus": os.cpu_count(),
        },
        "runs": runs,
        "load_start": load_start,
        "load_end": load(),
    }
    return emit("trl_step", figures, headline(figures))


if __name__ == "__main__":
    main()
