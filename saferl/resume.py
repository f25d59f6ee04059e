"""A resumed launch and the run directory's records: no step logged twice, none lost.

verl resumes from the newest complete checkpoint (`trainer.resume_mode=auto`) and redoes the steps after
it. The launch that was killed may already have logged some of those steps (its metrics, its data
order, its validation samples), so before the new launch starts, the records of every step after the
checkpoint are removed: the redone steps are then logged once, by the launch that finishes them.

verl saves a step's checkpoint before it logs the step. A launch killed in between leaves a checkpoint
whose step is logged nowhere; it resumes from the checkpoint before, so that step is done and logged again.

verl also validates before training on every launch (`trainer.val_before_train`), at the checkpoint's
step. When the killed launch already logged that validation, a second one would repeat the step in the
logs, so it is switched off for this launch; when it did not (killed between the checkpoint and the
validation), it stays on and fills the gap.
"""

from __future__ import annotations

import json
from pathlib import Path

from saferl.files import write_atomic
from saferl.metrics import VAL_SAMPLES, VALIDATIONS

METRICS_DIR, DATA_ORDER = "metrics", "data_order.jsonl"
VALIDATION_DIRS = (VAL_SAMPLES, VALIDATIONS)  # the replay buffer's per-validation files
# verl's validation figures all start with these (trainer_base.py `_val_metrics_update`).
VAL_PREFIXES = ("val-core/", "val-aux/")


def _keep_until(path: Path, step: int) -> list[dict]:
    """Rewrite a jsonl of `{"step": N, ...}` records without those after `step`; return what is kept.
    A torn last line (the kill came mid-write) is dropped with them."""
    kept, lines = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(record["step"]) <= step:
            kept.append(record)
            lines.append(line)
    write_atomic(path, "".join(f"{line}\n" for line in lines).encode())
    return kept


def _metrics_records(run_dir: Path):
    """Every `{"step": N, "data": {...}}` record of every launch's metrics file (a torn line skipped)."""
    for path in sorted((run_dir / METRICS_DIR).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def step_logged(run_dir: Path, step: int) -> bool:
    """Whether a launch logged the training metrics of `step` (verl logs a step after checkpointing it)."""
    return any(
        int(r["step"]) == step and "training/global_step" in r["data"] for r in _metrics_records(run_dir)
    )


def complete_checkpoints(run_dir: Path) -> list[int]:
    """The steps of the checkpoints verl could resume from (an actor and the data loader's position)."""
    steps = []
    for path in run_dir.glob("global_step_*"):
        step = path.name.split("_")[-1]
        if step.isdigit() and (path / "actor").is_dir() and (path / "data.pt").is_file():
            steps.append(int(step))
    return sorted(steps)


def resume_point(run_dir: Path, latest: int) -> int:
    """The checkpoint to resume from: the newest (`latest`), unless the launch was killed between saving it
    and logging its step, whose metrics would then be lost for good. Then the one before, so that step is
    trained and logged again (on the same prompts); 0 (a fresh start) when there is none."""
    if latest == 0 or step_logged(run_dir, latest):
        return latest
    return max((s for s in complete_checkpoints(run_dir) if s < latest), default=0)


def trim_after(run_dir: Path, step: int) -> bool:
    """Drop every record of a step after `step`; return whether the validation at `step` is logged."""
    validated = False
    for path in sorted((run_dir / METRICS_DIR).glob("*.jsonl")):
        for record in _keep_until(path, step):
            if int(record["step"]) == step and any(str(k).startswith(VAL_PREFIXES) for k in record["data"]):
                validated = True
    if (run_dir / DATA_ORDER).is_file():
        _keep_until(run_dir / DATA_ORDER, step)
    for folder in VALIDATION_DIRS:
        for path in (run_dir / folder).glob("step_*.jsonl"):
            if int(path.stem.split("_")[-1]) > step:
                path.unlink()
    return validated


def logged_steps(run_dir: Path) -> list[int]:
    """The steps the run's metrics files hold, each once, in order."""
    return sorted({int(r["step"]) for r in _metrics_records(run_dir) if "step" in r})
