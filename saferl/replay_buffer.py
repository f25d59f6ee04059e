"""`SaferlReplayBuffer`: verl's sync replay buffer, plus what saferl records about each batch it hands over.

verl's v1 trainer takes every training and validation batch from its replay buffer
(`trainer_base.py` `_step_once` and `_validate`), and lets a run swap the buffer's class by config
(`trainer.v1.sampler.custom_sampler`, a public plugin point); the metrics a training sample returns are
logged with that step. So this is where saferl adds, on verl's own trainer:

- the rollout and reward metrics of each training step (`rollout/reflect_rate`,
  `rollout/correction_success_rate`, `reward/<criterion>/mean`, `reward/hallucination_rate`, ...), from
  the agent loop's and the reward's per-trajectory fields (`saferl.metrics.rollout_metrics`);
- the data-order record: which prompts each step trained on (`data_order.jsonl`, sorted ids), how a
  resumed run is checked for repeated or skipped prompts;
- the sample trajectories of each validation (`val_samples/step_<N>.jsonl` and, with W&B on, a table
  with the images), read before verl computes its validation figures, and every validation trajectory
  (`validations/step_<N>.jsonl`), which the learning summary reads (`saferl.learning`);
- the fault rule: a prompt group whose rollout failed (a judge that is down raises in the agent loop) is
  an error, not a prompt to replace silently, as verl's buffer would (it refills failed groups); a
  trajectory the fault policy excluded (NaN reward) leaves the batch, so no NaN reaches a metric.

Sampling itself is verl's, unchanged. Settings: `trainer.v1.sampler.sampler_kwargs` (conf/base.yaml).
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

from saferl.files import append_jsonl, to_json_line, write_atomic
from saferl.metrics import (
    VAL_SAMPLES,
    VALIDATIONS,
    rollout_metrics,
    select_rows,
    table_rows,
    trajectory_records,
    trajectory_table,
)

logger = logging.getLogger(__name__)

TRAIN, VAL = "train", "val"
# The dataset row's fields the metrics and the table read (QISafeDataset lifts them to the row).
ROW_FIELDS = ("sample_id", "safety_label", "category", "question")
EXTRA_FIELDS = "extra_fields"
REWARD_EXTRA_INFO = "reward_extra_info"


class RolloutFailedError(RuntimeError):
    """Prompt groups failed in rollout; training on the rest would break the fault rule."""


def trajectory_columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Per-trajectory records (the row's fields, the loop's `extra_fields`, the reward's extra info
    inside it) as columns: one list per name, None where a trajectory lacks the name."""
    flat = []
    for record in records:
        extra = dict(record.get(EXTRA_FIELDS) or {})
        info = extra.pop(REWARD_EXTRA_INFO, None) or {}
        flat.append({**{k: v for k, v in record.items() if k != EXTRA_FIELDS}, **extra, **info})
    names = list(dict.fromkeys(name for row in flat for name in row))
    return {name: [row.get(name) for row in flat] for name in names}


def batch_prompts(columns: dict[str, list[Any]], keys: list[str]) -> list[str]:
    """The sample ids of a batch's prompts, each once, sorted: the buffer hands trajectories over in the
    order their rollouts finished, so the set, not the order, is what a step trained on."""
    ids = columns.get("sample_id") or [None] * len(keys)
    return sorted(
        {key.split("_")[0]: str(sample_id) for key, sample_id in zip(keys, ids, strict=True)}.values()
    )


class SaferlReplayBuffer(ReplayBuffer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.sampler_kwargs
        # verl's buffer sleeps `poll_interval` (2 s) between looks at TransferQueue while a batch is still
        # rolling out: up to 2 s lost per step and per validation, most of a tiny step's own time.
        self.poll_interval = float(opts.get("poll_interval_s", self.poll_interval))
        self.run_dir = Path(str(opts.run_dir))
        self.criteria = [str(c) for c in opts.criteria]
        self.table_rows = int(opts.table_rows)
        self.use_wandb = "wandb" in list(opts.loggers or [])
        self.val_files = [
            str(f) for f in ([opts.val_files] if isinstance(opts.val_files, str) else opts.val_files)
        ]
        self.judge = str(opts.get("judge") or "the judge")
        self._images: dict[str, bytes] | None = None
        self.refill_fn = self._refuse_failed_groups

    def _refuse_failed_groups(self, count: int) -> int:
        # verl's sync buffer calls refill_fn exactly when rollout groups failed (replay_buffer.py:467),
        # to replace them with new prompts: the step would then train on other prompts than it drew.
        raise RolloutFailedError(
            f"{count} prompt group(s) failed in rollout. A judge that does not answer fails the rollout "
            f"under saferl.reward.faults ({self.judge}); the agent-loop worker's log above has the "
            "error. Training on the other prompts would hide it, so training stops here."
        )

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[Any, dict]:
        batch, metrics = super().sample(global_steps, partition_id, batch_size)
        records, scores = self._records(batch)
        columns = trajectory_columns(records)
        if partition_id == TRAIN:
            metrics.update(rollout_metrics(columns, self.criteria))
            order = {"step": int(global_steps), "sample_ids": batch_prompts(columns, list(batch.keys))}
            append_jsonl(self.run_dir / "data_order.jsonl", [order])
        elif partition_id == VAL:
            self._record_validation(columns, int(global_steps))
        return self._without_excluded(batch, scores), metrics

    def _records(self, batch: Any) -> tuple[list[dict[str, Any]], list[float]]:
        """Each trajectory's row fields and loop/reward fields, and its reward (the sum of `rm_scores`)."""
        fields = [EXTRA_FIELDS, *ROW_FIELDS, "rm_scores"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        # TensorDict refuses `in` on itself: ask its keys.
        present = [name for name in fields if name in data.keys()]  # noqa: SIM118
        scores = data["rm_scores"].sum(dim=1).tolist() if "rm_scores" in present else []
        values = {name: _as_list(data[name]) for name in present if name != "rm_scores"}
        records = [{name: column[i] for name, column in values.items()} for i in range(len(batch.keys))]
        return records, scores

    def _without_excluded(self, batch: Any, scores: list[float]) -> Any:
        """The batch without the trajectories the fault policy excluded (a failed judgement, NaN reward).

        Excluded means "learns nothing and weighs nothing in its group", and a NaN would otherwise reach
        verl's score metrics and validation means. Dropped here, they are out of the advantage, the loss
        and every metric (they are counted in `reward/judge_failures` above); verl pads the batch back to
        its divisible size with no-op samples of its own (padding_utils.py `upsample_batch_to_divisible_size`)."""
        keep = [i for i, score in enumerate(scores) if math.isfinite(score)]
        if not scores or len(keep) == len(batch.keys):
            return batch
        if not keep:
            raise RolloutFailedError(
                f"every judgement of this batch failed ({self.judge}): there is no reward to train on"
            )
        kept = set(keep)
        dropped = [key for i, key in enumerate(batch.keys) if i not in kept]
        tq.kv_clear(keys=dropped, partition_id=batch.partition_id)
        logger.info(
            "%d trajectories excluded (judge failures) from the %s batch", len(dropped), batch.partition_id
        )
        return KVBatchMeta(
            partition_id=batch.partition_id,
            keys=[batch.keys[i] for i in keep],
            tags=[batch.tags[i] for i in keep],
        )

    # -- validation samples ---------------------------------------------------------------------------

    def _record_validation(self, columns: dict[str, list[Any]], step: int) -> None:
        """The table's sample rows (`val_samples/`) and every trajectory (`validations/`, what the
        learning summary reads)."""
        for folder, rows in (
            (VAL_SAMPLES, table_rows(columns, self.table_rows, self.criteria)),
            (VALIDATIONS, trajectory_records(columns, self.criteria)),
        ):
            path = self.run_dir / folder / f"step_{step}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, "".join(to_json_line(r) for r in rows).encode())
        if self.use_wandb:
            self._log_wandb_table(columns, step)

    def _log_wandb_table(self, columns: dict[str, list[Any]], step: int) -> None:
        import wandb
        from PIL import Image

        if wandb.run is None:  # verl's Tracking starts the run in this process before any validation
            logger.warning("no W&B run in this process: the trajectory table of step %d is not logged", step)
            return
        images = self._val_images()
        pictures = [images.get(str(sid)) for sid in columns.get("sample_id") or []]
        table = trajectory_table(columns, pictures, max_rows=self.table_rows, criteria=self.criteria)
        # The same samples' images as a plain media list too: wandb keeps a run table's images only in an
        # upload-time artifact, so an offline run would hold just "Image" placeholders.
        shown = [i for i in select_rows(columns, self.table_rows) if pictures[i]]
        media = [
            wandb.Image(Image.open(io.BytesIO(pictures[i])), caption=str(columns["sample_id"][i]))
            for i in shown
        ]
        wandb.run.log({"val/trajectories": table, "val/trajectory_images": media}, step=step)

    def _val_images(self) -> dict[str, bytes]:
        """sample id -> image bytes of the val files (read once: TransferQueue keeps no raw images)."""
        if self._images is None:
            import pyarrow.parquet as pq

            self._images = {}
            for path in self.val_files:
                for row in pq.read_table(path, columns=["extra_info", "images"]).to_pylist():
                    images = row.get("images") or []
                    if images and images[0].get("bytes"):
                        self._images[str((row.get("extra_info") or {}).get("id"))] = images[0]["bytes"]
        return self._images


def _as_list(value: Any) -> list[Any]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in value]
