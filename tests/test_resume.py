"""What a resumed launch does to the run directory's records (`saferl.resume`), on run directories laid
out as verl's trainer writes them. The end-to-end SIGKILL test (`test_train.py`) kills at whatever
moment the machine gives it; these pin down each moment it can hit."""

from __future__ import annotations

import json
from pathlib import Path

from saferl.resume import logged_steps, resume_point, trim_after


def _run_dir(tmp_path: Path, checkpoints: list[int], logged: dict[int, list[str]]) -> Path:
    run = tmp_path / "run"
    for step in checkpoints:
        (run / f"global_step_{step}" / "actor").mkdir(parents=True)
        (run / f"global_step_{step}" / "data.pt").write_bytes(b"loader state")
    (run / "metrics").mkdir(parents=True)
    lines = [json.dumps({"step": s, "data": {k: 1.0 for k in keys}}) for s, keys in sorted(logged.items())]
    (run / "metrics" / "from_step_0.jsonl").write_text("\n".join(lines) + '\n{"step": 9, "da')  # torn
    (run / "data_order.jsonl").write_text(
        "".join(json.dumps({"step": s, "sample_ids": [f"p{s}"]}) + "\n" for s in range(1, 5))
    )
    for folder in ("val_samples", "validations"):
        (run / folder).mkdir()
        for step in (0, 2, 4):
            (run / folder / f"step_{step}.jsonl").write_text("{}\n")
    return run


TRAIN, VAL = ["training/global_step", "actor/pg_loss"], ["val-aux/qi_safe_10k/harmful_rate/mean@1"]


def test_resume_from_the_newest_checkpoint_whose_step_is_logged(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, [1, 2, 3], {0: VAL, 1: TRAIN, 2: TRAIN + VAL, 3: TRAIN})
    assert resume_point(run, 3) == 3


def test_killed_between_saving_a_step_and_logging_it_resumes_from_the_one_before(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, [1, 2, 3], {0: VAL, 1: TRAIN, 2: TRAIN + VAL})
    assert resume_point(run, 3) == 2  # step 3 is saved but logged nowhere: it is redone
    first = _run_dir(tmp_path / "first", [1], {0: VAL})
    assert resume_point(first, 1) == 0  # no checkpoint before it: a fresh start


def test_the_records_of_redone_steps_are_removed(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, [1, 2, 3], {0: VAL, 1: TRAIN, 2: TRAIN + VAL, 3: TRAIN})
    assert trim_after(run, 2) is True  # the validation at step 2 is logged: no second one at resume
    assert logged_steps(run) == [0, 1, 2]  # step 3 (and the torn line) gone
    order = [json.loads(x)["step"] for x in (run / "data_order.jsonl").read_text().splitlines()]
    assert order == [1, 2]
    for folder in ("val_samples", "validations"):
        assert sorted(p.name for p in (run / folder).iterdir()) == ["step_0.jsonl", "step_2.jsonl"]
    assert trim_after(run, 1) is False  # no validation at step 1: the resumed launch validates there


def test_killed_during_a_validation_before_its_checkpoint_each_log_holds_each_step_once(
    tmp_path: Path,
) -> None:
    """Step 4 is recorded (its data order, its training metrics, its validation samples) and the kill comes
    during its validation, before its checkpoint: the resumed launch (from step 2, the newest checkpoint)
    redoes steps 3 and 4, so every log is cut back to step 2, counted line by line."""
    run = _run_dir(tmp_path, [1, 2], {0: VAL, 1: TRAIN, 2: TRAIN + VAL, 3: TRAIN, 4: TRAIN})
    assert resume_point(run, 2) == 2
    trim_after(run, 2)
    metric_steps = [
        json.loads(x)["step"] for x in (run / "metrics" / "from_step_0.jsonl").read_text().splitlines()
    ]
    order_steps = [json.loads(x)["step"] for x in (run / "data_order.jsonl").read_text().splitlines()]
    assert metric_steps == [0, 1, 2] and order_steps == [1, 2]  # lines, not a set: a repeat would show
    for folder in ("val_samples", "validations"):
        assert sorted(p.name for p in (run / folder).iterdir()) == ["step_0.jsonl", "step_2.jsonl"]
    # the resumed launch then appends steps 3 and 4 once each
    with (run / "data_order.jsonl").open("a") as f:
        f.writelines(json.dumps({"step": s, "sample_ids": [f"p{s}"]}) + "\n" for s in (3, 4))
    lines = (run / "data_order.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]
