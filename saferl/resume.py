"""A resumed launch and the run directory's records: no step logged twice, none lost.

verl resumes from the newest complete checkpoint (`trainer.resume_mode=auto`) and redoes the steps after
it. The launch that was killed may already have logged some of those steps (its metrics, its data
order, its validation samples), so before the new launch starts, the records of every step after the
checkpoint are removed: the redone steps are then logged once, by the launch that finishes them.

verl also validates before training on every launch (`trainer.val_before_train`), at the checkpoint's
step. When the killed launch already logged that validation, a second one would repeat the step in the
logs, so it is switched off for this launch; when it did not (killed between the checkpoint and the
validation), it stays on and fills the gap.
"""

from __future__ import annotations

import json
from pathlib import Path

from saferl.files import write_atomic

METRICS_DIR, DATA_ORDER, VAL_SAMPLES = "metrics", "data_order.jsonl", "val_samples"
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


def trim_after(run_dir: Path, step: int) -> bool:
    """Drop every record of a step after `step`; return whether the validation at `step` is logged."""
    validated = False
    for path in sorted((run_dir / METRICS_DIR).glob("*.jsonl")):
        for record in _keep_until(path, step):
            if int(record["step"]) == step and any(str(k).startswith(VAL_PREFIXES) for k in record["data"]):
                validated = True
    if (run_dir / DATA_ORDER).is_file():
        _keep_until(run_dir / DATA_ORDER, step)
    for path in (run_dir / VAL_SAMPLES).glob("step_*.jsonl"):
        if int(path.stem.split("_")[-1]) > step:
            path.unlink()
    return validated


def logged_steps(run_dir: Path) -> list[int]:
    """The steps the run's metrics files hold, each once, in order."""
    steps = set()
    for path in (run_dir / METRICS_DIR).glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                steps.add(int(json.loads(line)["step"]))
            except (json.JSONDecodeError, KeyError, ValueError):
                continue
    return sorted(steps)
