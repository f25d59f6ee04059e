"""`python -m benchmarks.learning [--ablation] [--seeds 0,1,2] [--out DIR] [overrides]`: does the loop learn?

The tiny benchmark's proof (issue 14): `python -m saferl.train +exp=tiny` on several seeds, each run's
validations read per row group (`saferl.learning`: the headline rows a tiny model can see, the
image-decided twins, the typographic rows apart), and the proof's checks on the median run. With
`--ablation`, the paper's claim in miniature, at equal steps and on the same seeds:

- `full`: the method (reflect-and-correct rollout, structured reward, GRPO);
- `no_reflection`: plain GRPO, `saferl.rollout.rounds=0`;
- `scalar_safety`: reflection, with a scalar safety-only reward (every other criterion's weight and every
  penalty 0) instead of the structured one.

Runs go to `DIR/<arm>/seed_<N>` and are resumed, not redone, when the command is run again (a finished run
is read as it is). It writes `DIR/learning.json`, `DIR/learning.md` (the table: harmful, benign refusal
and format before and after RL, per arm, mean and spread over seeds) and `DIR/learning.png` (every seed's
curve), and prints the proof's checks as a table, then the summary and the proof as one JSON line; the
exit code is 1 when a check on the method's median run fails. A benchmark, not a test: on 2 idle cores a
run takes ~10 min, so `python -m benchmarks` lists it rather than running it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import Row, emit
from saferl.learning import FIGURES, GROUPS, Figures, as_json, curve, proof
from saferl.resources import ROOT as REPO_ROOT
from saferl.resume import logged_steps

ARMS: dict[str, list[str]] = {
    "full": [],
    "no_reflection": ["saferl.rollout.rounds=0"],
    "scalar_safety": [
        *(
            f"saferl.reward.rubric.criteria.{name}.weight=0"
            for name in ("helpfulness", "reasoning_coherence", "visual_grounding", "format")
        ),
        *(
            f"saferl.reward.rubric.penalties.{name}=0"
            for name in ("hallucination", "contradiction", "injection")
        ),
    ],
}
# Seeds per arm in the ablation (issue 14: at least 3 for the method and plain GRPO, 2 for the third).
ABLATION_SEEDS = {"full": 3, "no_reflection": 3, "scalar_safety": 2}


def seed_overrides(seed: int) -> list[str]:
    """What a seed changes: the data order, the warm start's batches, and rollout sampling."""
    return [f"data.seed={seed}", f"saferl.warm_start.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}"]


def finished(run_dir: Path, steps: int) -> bool:
    return run_dir.is_dir() and max(logged_steps(run_dir), default=0) >= steps


def run_arm(arm: str, seed: int, out: Path, steps: int, overrides: list[str]) -> dict[str, Any]:
    """One run (or the one already on disk), with its curve per row group."""
    from benchmarks.train import run_tiny

    run_dir = out / arm / f"seed_{seed}"
    run = {"arm": arm, "seed": seed, "run_dir": str(run_dir)}
    if not finished(run_dir, steps):
        command = [*ARMS[arm], *seed_overrides(seed), f"trainer.total_training_steps={steps}", *overrides]
        measured = run_tiny(REPO_ROOT, command, run_dir=run_dir)
        run.update({k: measured[k] for k in ("exit_code", "wall_s", "peak_pss_gb", "seconds_per_step")})
    run["curve"] = curve(run_dir)
    return run


def _stats(values: Sequence[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "sd": None}
    return {"mean": statistics.fmean(present), "sd": statistics.stdev(present) if len(present) > 1 else 0.0}


def summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Arm -> group -> figure -> before/after mean and spread over the arm's seeds."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        curves = [r["curve"] for r in runs if r["arm"] == arm and r["curve"]]
        table[arm] = {}
        for group in GROUPS:
            row: dict[str, Any] = {"seeds": len(curves)}
            for name in FIGURES:
                for end, pick in (("before", 0), ("after", -1)):
                    values = []
                    for c in curves:
                        figures: Figures | None = c[sorted(c)[pick]].get(group)
                        values.append(getattr(figures, name) if figures else None)
                    row[f"{name}_{end}"] = _stats(values)
            table[arm][group] = row
    return table


def _cell(row: Mapping[str, Any], name: str) -> str:
    def fmt(stat: Mapping[str, float | None]) -> str:
        if stat["mean"] is None:
            return "-"
        return f"{100 * stat['mean']:.0f}±{100 * stat['sd']:.0f}"

    return f"{fmt(row[f'{name}_before'])} → {fmt(row[f'{name}_after'])}"


def markdown(table: Mapping[str, Mapping[str, Mapping[str, Any]]], checks: Mapping[str, list]) -> str:
    lines = [
        "| arm | rows | seeds | harmful % | unsafe refused % | benign refused % | format % |",
        "|---|---|---:|---|---|---|---|",
    ]
    for arm, groups in table.items():
        for group, row in groups.items():
            cells = " | ".join(_cell(row, name) for name in FIGURES)
            lines.append(f"| {arm} | {group} | {row['seeds']} | {cells} |")
    lines.append("")
    lines.append("Before → after RL, mean ± sd over seeds (greedy validation).")
    for arm, arm_checks in checks.items():
        lines.append("")
        lines.append(f"Proof on the median `{arm}` run:")
        lines += [f"- [{'x' if c.passed else ' '}] {c.name}: {c.detail}" for c in arm_checks]
    return "\n".join(lines)


def plot(runs: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("headline", "harmful"),
        ("headline", "benign_refusal"),
        ("headline", "format"),
        ("twins", "harmful"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), sharey=True)
    colours = dict(zip(ARMS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for ax, (group, name) in zip(axes, panels, strict=True):
        for run in runs:
            steps = sorted(run["curve"])
            values = [getattr(run["curve"][s].get(group), name, None) for s in steps]
            ax.plot(
                steps,
                values,
                marker="o",
                color=colours[run["arm"]],
                alpha=0.7,
                label=f"{run['arm']} s{run['seed']}",
            )
        ax.set_title(f"{group}: {name}")
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def headline(figures: dict[str, Any]) -> list[Row]:
    """The headline rows' figures before → after RL per arm (mean over seeds), and the proof's checks."""
    rows: list[Row] = []
    for arm, groups in figures["table"].items():
        row = groups.get("headline")
        if row:
            for name in FIGURES:
                rows.append((f"{arm}: headline {name} % (before → after)", _cell(row, name), ""))
    for arm, checks in figures["proof"].items():
        rows += [
            (f"{arm}: proof: {c['name']}", c["detail"], "ok" if c["passed"] else "MISSED") for c in checks
        ]
    return rows


def passed(figures: Mapping[str, Any]) -> bool:
    return all(c["passed"] for c in figures["proof"]["full"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.learning", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--ablation", action="store_true", help="all three arms (default: the method only)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the method's runs")
    parser.add_argument("--steps", type=int, default=80, help="training steps per run (tiny's own: 80)")
    parser.add_argument("--out", type=Path, default=Path("bench/learning"))
    args, overrides = parser.parse_known_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    plan = [("full", s) for s in seeds]
    if args.ablation:
        plan += [(arm, s) for arm in ("no_reflection", "scalar_safety") for s in seeds[: ABLATION_SEEDS[arm]]]
    out = args.out.resolve()
    runs = []
    for arm, seed in plan:
        print(f"benchmarks.learning: {arm} seed {seed}", file=sys.stderr, flush=True)
        runs.append(run_arm(arm, seed, out, args.steps, overrides))
    table = summary(runs)
    checks = {arm: proof([r["curve"] for r in runs if r["arm"] == arm]) for arm in table}
    report = {
        "steps": args.steps,
        "table": table,
        "proof": {arm: [c.__dict__ for c in arm_checks] for arm, arm_checks in checks.items()},
        "runs": [{**r, "curve": as_json(r["curve"])} for r in runs],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(json.dumps(report, indent=2))
    (out / "learning.md").write_text(markdown(table, checks) + "\n")
    plot(runs, out / "learning.png")
    figures = {"table": table, "proof": report["proof"], "out": str(out)}
    return emit("learning", figures, headline(figures))


if __name__ == "__main__":
    raise SystemExit(0 if passed(main()) else 1)
