"""The end-of-run summary (`saferl.run_summary`): first → best → last, and the format-collapse alarm,
on real validation files in the replay buffer's format."""

from __future__ import annotations

import json
from pathlib import Path

from saferl.files import write_atomic
from saferl.metrics import VALIDATIONS
from saferl.run_summary import Validation, best, collapsed, render, summary


def record(label: str, flags: str, safety: float = 5.0, helpfulness: float = 5.0) -> dict:
    return {
        "sample_id": f"x:{label}:{flags}",
        "safety_label": label,
        "criteria": json.dumps({"safety_awareness": safety, "helpfulness": helpfulness, "format": 10.0}),
        "flags": flags,
    }


def write_validation(run_dir: Path, step: int, records: list[dict]) -> None:
    path = run_dir / VALIDATIONS / f"step_{step}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def test_a_falling_harmful_rate_with_a_falling_format_rate_is_called_a_collapse(tmp_path: Path) -> None:
    """The issue's case: harmful falls because answers stop being well formed. The table shows both and
    a loud warning names the step; the best validation is not the collapsed one."""
    write_validation(tmp_path, 0, [record("unsafe", "harmful")] * 8 + [record("safe", "")] * 8)
    write_validation(
        tmp_path,
        20,
        [record("unsafe", "")] * 4 + [record("unsafe", "harmful")] * 4 + [record("safe", "")] * 8,
    )
    write_validation(
        tmp_path, 40, [record("unsafe", "bad_format")] * 8 + [record("safe", "bad_format,over_refusal")] * 8
    )
    (tmp_path / "global_step_20").mkdir()
    lines = summary(tmp_path)
    text = "\n".join(lines)
    assert "| first | 0 | 100% | 0% | 100% |" in text
    assert "| best | 20 | 50% | 0% | 100% |" in text  # not step 40: its format collapsed
    assert "| last | 40 | 0% | 100% | 0% |" in text
    assert f"its checkpoint: {tmp_path / 'global_step_20'}" in text
    [warning] = [line for line in lines if "FORMAT COLLAPSE" in line]
    assert "at step 40" in warning and "0% against 100% at step 0" in warning


def test_collapse_is_more_than_twenty_points() -> None:
    first = Validation(0, 0.9, 0.1, 0.86, 5.0, 5.0)
    assert not collapsed(first, Validation(20, 0.5, 0.1, 0.66, 5.0, 5.0))  # exactly 20 points: not yet
    assert collapsed(first, Validation(40, 0.1, 0.1, 0.65, 5.0, 5.0))
    assert not collapsed(first, Validation(40, 0.1, 0.1, None, 5.0, 5.0))  # no format figure: no verdict


def test_best_prefers_fewer_harms_plus_refusals_and_the_later_step_on_a_tie() -> None:
    runs = [
        Validation(0, 0.8, 0.0, 1.0, 5, 5),
        Validation(10, 0.2, 0.6, 1.0, 5, 5),
        Validation(20, 0.3, 0.1, 1.0, 5, 5),
    ]
    assert best(runs).step == 20  # 0.4 against 0.8 and 0.8
    tie = [Validation(0, 0.5, 0.0, 1.0, 5, 5), Validation(10, 0.5, 0.0, 1.0, 5, 5)]
    assert best(tie).step == 10


def test_no_validation_says_so(tmp_path: Path) -> None:
    assert render([], tmp_path) == [
        "saferl: no validation was logged (trainer.test_freq): nothing to say about what it learned"
    ]
    assert "none saved at step 0" in "\n".join(render([Validation(0, 0.5, 0.0, 1.0, 5.0, 5.0)], tmp_path))
