"""The project's benchmarks: one home, one command. A benchmark measures; it is not a test.

    python -m benchmarks [--only NAME[,NAME]] [--quick]   # the quick ones, one table, one JSON line
    python -m benchmarks.<name> [its own arguments]      # one benchmark alone

Every benchmark is a module here whose `main(argv) -> dict` runs it, prints its table (`emit`) and, as
the last line of its output, its figures as one JSON object, and returns them; `headline(figures)` picks
the rows of the table (figure, value, target). `python -m benchmarks` runs each in its own process (one
that fails is an error row and a non-zero exit, not a hidden one) and prints one table for all of them,
then one JSON object with every benchmark's figures. The long ones (a full training run each) are not run
by default: it lists them with their commands, and `--only` runs them.

This package is not shipped in the wheel (setup.py packages saferl, rewards and rollout only): it runs
from a checkout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Benchmark:
    name: str  # the module, `benchmarks.<name>`
    measures: str
    quick: bool = False  # takes --quick (fewer repeats and sizes)
    long: bool = False  # a training run or more: not run by `python -m benchmarks` unless --only names it
    usage: str = ""  # its arguments, for the list of long ones


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "tiny_model", "the tiny offline model: cold build, cached lookup, load, forward, generate", True
        ),
        Benchmark("data_pipeline", "QI selection over scored candidates; validation of image rows", True),
        Benchmark("judge_client", "the `openai` judge client against a fixed-latency fake judge", True),
        Benchmark(
            "cpu_rollout", "CPU rollout servers: tokens/s of 1 and 2 actors; reflection wall time", True
        ),
        Benchmark(
            "train",
            "the full `tiny` learning run: wall, s/step, peak memory, val curve (~15 min on 2 cores)",
            long=True,
            usage="[--baseline CHECKOUT] [overrides]",
        ),
        Benchmark(
            "trl_step",
            "one GRPO step, the project's trainer against TRL's GRPOTrainer (~12 min on 2 cores)",
            quick=True,
            long=True,
            usage="[--quick] [--steps K] [--rounds R] [overrides]",
        ),
        Benchmark(
            "learning",
            "does the loop learn: `tiny` on 3 seeds, the proof's checks (~30 min; --ablation ~80 min)",
            long=True,
            usage="[--ablation] [--seeds 0,1,2] [--out DIR] [overrides]",
        ),
    )
}

# A table row: (figure, value, target); target is "" where there is none, else e.g. ">= 1.6 ok".
Row = tuple[str, Any, str]


def target(value: float | None, op: str, bound: float, unit: str = "") -> str:
    """`<op> <bound><unit>` and whether `value` meets it: `ok`, `MISSED`, or `n/a` without a value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        verdict = "n/a"
    else:
        met = {
            "<=": value <= bound,
            ">=": value >= bound,
            "<": value < bound,
            ">": value > bound,
            "==": value == bound,
        }[op]
        verdict = "ok" if met else "MISSED"
    return f"{op} {bound:g}{unit} {verdict}"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """A Markdown table, padded so it reads as plain text too."""
    cells = [
        [str(h) for h in header],
        *([fmt(c) if i == 2 else str(c) for i, c in enumerate(r)] for r in rows),
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


HEADER = ("benchmark", "figure", "value", "target")


def emit(name: str, figures: dict[str, Any], rows: Iterable[Row]) -> dict[str, Any]:
    """Print one benchmark's table, then its figures as ONE JSON line (the last line of its output)."""
    print(table([(name, *row) for row in rows], HEADER))
    print(json.dumps(figures), flush=True)
    return figures
