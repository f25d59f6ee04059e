"""`python -m benchmarks.train [--baseline CHECKOUT] [overrides]`: the `tiny` learning run as a benchmark.

Runs `python -m saferl.train +exp=tiny` exactly as the README does, in a subprocess, and prints what the
training issues ask of it: wall time, seconds per training step (verl's `timing_s/step`), peak memory of
the whole process tree (driver, Ray, verl's workers, rollout servers, reward worker; sampled, PSS and RSS) and
the validation curve under verl's names. Whether the run learned is `benchmarks.learning`'s question (per
row group, over seeds); it runs each of its runs through `run_tiny` here.

`--baseline CHECKOUT` runs the same command in another checkout of the project first (for example a
`git worktree` of an earlier commit), in the same invocation and on the same settings, and prints both
side by side with the ratio of their seconds per step. A benchmark, not a test: a table, then the figures
as one JSON line; the exit code is the run's. About a quarter of an hour on 2 cores, so `python -m
benchmarks` lists it rather than running it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import Row, emit, target
from saferl.resources import ROOT as REPO_ROOT

TIME_BUDGET_S = 15 * 60
MEMORY_BUDGET_GB = 12.0


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of a process and all its descendants (Ray's processes are spawned under it).

    RSS counts every shared page once per process: the dozen Ray and verl processes of a run each map
    torch's libraries, so their RSS sum overstates the memory the run takes. PSS splits each shared page
    between the processes that map it, so the tree's PSS sum is what the run costs the machine."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):  # exited while being read
            info = proc.memory_full_info()
            rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


# The validation figures, under verl's names (the reward's per-sample outcomes, averaged by verl over the
# samples each applies to) and under the names of the local engine this trainer replaced (for --baseline).
CURVE_KEYS = {
    "harmful_rate": ("val-aux/qi_safe_10k/harmful_rate/mean@1", "val/harmful_rate"),
    "refusal_rate": ("val-aux/qi_safe_10k/refusal_rate/mean@1", "val/refusal_rate"),
    "format_rate": ("val-aux/qi_safe_10k/format_rate/mean@1", "val/format_rate"),
    "safety": ("val-aux/qi_safe_10k/criterion/safety_awareness/mean@1", "val/safety_score"),
    "helpfulness": ("val-aux/qi_safe_10k/criterion/helpfulness/mean@1", "val/helpfulness_score"),
}


def records(run_dir: Path) -> dict[int, dict[str, float]]:
    """Every launch's metrics by step (a later launch's record of a step wins)."""
    steps: dict[int, dict[str, float]] = {}
    for path in sorted(
        (run_dir / "metrics").glob("from_step_*.jsonl"), key=lambda p: int(p.stem.split("_")[-1])
    ):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            steps.setdefault(int(record["step"]), {}).update(record["data"])
    return steps


def val_curve(steps: dict[int, dict[str, float]]) -> list[dict[str, float]]:
    curve = []
    for step, data in sorted(steps.items()):
        point = {
            name: round(float(data[key]), 4)
            for name, keys in CURVE_KEYS.items()
            for key in keys
            if key in data
        }
        if "harmful_rate" in point:
            curve.append({"step": step, **point})
    return curve


def seconds_per_step(steps: dict[int, dict[str, float]]) -> dict[str, float | None]:
    """Mean and median of `timing_s/step` over the training steps, the first (warm-up) step left out."""
    times = [float(d["timing_s/step"]) for s, d in sorted(steps.items()) if "timing_s/step" in d][1:]
    if not times:
        return {"mean": None, "median": None, "steps": 0}
    ordered = sorted(times)
    return {
        "mean": round(sum(times) / len(times), 3),
        "median": round(ordered[len(ordered) // 2], 3),
        "steps": len(times),
    }


def tiny_command(run_dir: Path, overrides: list[str]) -> list[str]:
    """The README's `python -m saferl.train +exp=tiny`, writing to `run_dir`, with `overrides`."""
    return [
        sys.executable,
        "-m",
        "saferl.train",
        "+exp=tiny",
        f"trainer.default_local_dir={run_dir}",
        *overrides,
    ]


def run_tiny(checkout: Path, overrides: list[str], run_dir: Path | None = None) -> dict[str, object]:
    """`python -m saferl.train +exp=tiny` in `checkout` (its own code first on the path), measured; in
    `run_dir` (default: a fresh temporary one)."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="saferl-bench-")) / "tiny"
    command = tiny_command(run_dir, overrides)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")])}
    print(f"running in {checkout}:", " ".join(command), file=sys.stderr, flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=checkout, env=env)
    peak_rss = peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_rss
        while not stop.is_set():
            rss, pss = tree_memory(process.pid)
            peak, peak_rss = max(peak, pss), max(peak_rss, rss)
            stop.wait(2.0)  # reading every process's smaps for PSS costs CPU: sample sparingly

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - start
    steps = records(run_dir)
    curve = val_curve(steps)
    return {
        "checkout": str(checkout),
        "command": " ".join(command[1:]),
        "exit_code": code,
        "wall_s": round(wall, 1),
        "seconds_per_step": seconds_per_step(steps),
        "peak_pss_gb": round(peak / 1e9, 2),  # the budget's figure: shared pages counted once
        "peak_rss_sum_gb": round(peak_rss / 1e9, 2),  # shared pages counted once per process
        "within_time": wall <= TIME_BUDGET_S,
        "within_memory": peak / 1e9 <= MEMORY_BUDGET_GB,
        "curve": curve,
        "run_dir": str(run_dir),
    }


def headline(figures: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for side in ("baseline", "this"):
        if side not in figures:
            continue
        run = figures[side]
        last = run["curve"][-1] if run["curve"] else {}
        rows += [
            (f"{side}: exit code", run["exit_code"], target(run["exit_code"], "==", 0)),
            (f"{side}: wall (s)", run["wall_s"], target(run["wall_s"], "<=", TIME_BUDGET_S, " s")),
            (f"{side}: s/step (mean)", run["seconds_per_step"]["mean"], ""),
            (
                f"{side}: peak PSS (GB)",
                run["peak_pss_gb"],
                target(run["peak_pss_gb"], "<=", MEMORY_BUDGET_GB, " GB"),
            ),
            (f"{side}: val harmful rate, last (step {last.get('step', '-')})", last.get("harmful_rate"), ""),
        ]
    if "step_time_ratio_this_over_baseline" in figures:
        rows.append(("s/step, this / baseline", figures["step_time_ratio_this_over_baseline"], ""))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to run the same command in first")
    args, overrides = parser.parse_known_args(argv)
    report: dict[str, Any] = {}
    if args.baseline:
        report["baseline"] = run_tiny(args.baseline.resolve(), overrides)
    report["this"] = run_tiny(REPO_ROOT, overrides)
    if args.baseline:
        ours, theirs = (
            report["this"]["seconds_per_step"]["mean"],
            report["baseline"]["seconds_per_step"]["mean"],
        )
        report["step_time_ratio_this_over_baseline"] = round(ours / theirs, 3) if ours and theirs else None
    return emit("train", report, headline(report))


if __name__ == "__main__":
    raise SystemExit(int(main()["this"]["exit_code"]))
