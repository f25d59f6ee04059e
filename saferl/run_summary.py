"""What a run learned, said at its end: its validations first → best → last, and a format-collapse alarm.

A falling harmful rate alone reads as success, and is not one when the policy stops answering: an answer
that never closes `<think>` is never harmful. So the summary shows the harmful rate beside benign
refusal, format, safety and helpfulness, and warns loudly when a validation's format rate has fallen by
more than `FORMAT_COLLAPSE` from the first one. The figures are `saferl.learning`'s, over every val row,
read from the trajectories the replay buffer writes (`validations/step_<N>.jsonl`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards.rubric import HELPFULNESS, SAFETY
from saferl.learning import figures, read_validations
from saferl.metrics import VALIDATIONS as VALIDATIONS_DIR

FORMAT_COLLAPSE = 0.20  # a fall of more than 20 points from the first validation's format rate
COLUMNS = ("harmful", "benign_refusal", "format", "safety", "helpfulness")
CHECKPOINT = "global_step_{step}"  # verl's checkpoint folder of a step (trainer_base.py `_save_checkpoint`)


@dataclass(frozen=True)
class Validation:
    """One validation's figures: rates in [0, 1], criteria on the judge's 0..10 (None where none)."""

    step: int
    harmful: float | None
    benign_refusal: float | None
    format: float | None
    safety: float | None
    helpfulness: float | None


def _criterion_mean(records: Sequence[Mapping[str, Any]], name: str) -> float | None:
    values = []
    for record in records:
        criteria = record.get("criteria")
        criteria = json.loads(criteria) if isinstance(criteria, str) and criteria else criteria or {}
        if criteria.get(name) is not None:
            values.append(float(criteria[name]))
    return sum(values) / len(values) if values else None


def validation_of(step: int, records: Sequence[Mapping[str, Any]]) -> Validation:
    rates = figures(records)
    return Validation(
        step=step,
        harmful=rates.harmful,
        benign_refusal=rates.benign_refusal,
        format=rates.format,
        safety=_criterion_mean(records, SAFETY),
        helpfulness=_criterion_mean(records, HELPFULNESS),
    )


def collapsed(first: Validation, later: Validation) -> bool:
    """Whether `later`'s format rate has fallen more than `FORMAT_COLLAPSE` below `first`'s."""
    if first.format is None or later.format is None:
        return False
    return first.format - later.format > FORMAT_COLLAPSE + 1e-12


def best(validations: Sequence[Validation]) -> Validation | None:
    """The validation to keep: of those whose format has not collapsed, the lowest harmful rate plus
    benign-refusal rate (refusing everything is not safe, complying with everything is not helpful);
    the later one on a tie. None when there is none."""
    if not validations:
        return None
    kept = [v for v in validations if not collapsed(validations[0], v)]

    def cost(v: Validation) -> tuple[float, int]:
        return (v.harmful or 0.0) + (v.benign_refusal or 0.0), -v.step

    return min(kept, key=cost) if kept else None


def _cell(value: float | None, column: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if column in ("safety", "helpfulness") else f"{100 * value:.0f}%"


def render(validations: Sequence[Validation], run_dir: Path) -> list[str]:
    """The end-of-run lines: a table of first / best / last, where the best checkpoint is, and a loud
    warning for every validation whose format collapsed."""
    if not validations:
        return ["saferl: no validation was logged (trainer.test_freq): nothing to say about what it learned"]
    first, last, chosen = validations[0], validations[-1], best(validations)
    rows = [("first", first), ("best", chosen), ("last", last)]
    lines = [
        "saferl: what the validations say (harmful: unsafe prompts answered; benign refusal: safe prompts "
        "refused; format: well-formed answers; safety, helpfulness: judge means on 0..10)",
        "| validation | step | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for name, v in rows:
        if v is None:
            lines.append(f"| {name} | - |" + " - |" * len(COLUMNS))
        else:
            cells = " | ".join(_cell(getattr(v, c), c) for c in COLUMNS)
            lines.append(f"| {name} | {v.step} | {cells} |")
    if chosen is not None:
        checkpoint = run_dir / CHECKPOINT.format(step=chosen.step)
        where = checkpoint if checkpoint.is_dir() else f"none saved at step {chosen.step} (trainer.save_freq)"
        lines.append(f"saferl: best validation at step {chosen.step}; its checkpoint: {where}")
    lines.extend(_collapse_warning(first, v) for v in validations[1:] if collapsed(first, v))
    return lines


def _collapse_warning(first: Validation, later: Validation) -> str:
    return (
        f"saferl: WARNING: FORMAT COLLAPSE at step {later.step}: well-formed answers "
        f"{_cell(later.format, 'format')} against {_cell(first.format, 'format')} at step {first.step}. A falling "
        "harmful rate with a falling format rate is not learning: the policy stops answering (read val_samples/)."
    )


def summary(run_dir: str | Path) -> list[str]:
    """`render` over a run directory's validations."""
    run_dir = Path(run_dir)
    validations = [validation_of(step, records) for step, records in read_validations(run_dir).items()]
    return render(validations, run_dir)


def validation_lines(run_dir: str | Path, step: int) -> list[str]:
    """What the console says when the validation at `step` is logged: its figures in one line, and the
    format-collapse alarm when it has fallen from the first validation's."""
    records = read_validations(run_dir)
    if step not in records:
        return [f"saferl: validation at step {step}: no trajectories recorded under {VALIDATIONS_DIR}/"]
    first = validation_of(min(records), records[min(records)])
    now = validation_of(step, records[step])
    cells = ", ".join(f"{c.replace('_', ' ')} {_cell(getattr(now, c), c)}" for c in COLUMNS)
    lines = [f"saferl: validation at step {step}: {cells}"]
    if collapsed(first, now):
        lines.append(_collapse_warning(first, now))
    return lines
