"""The warm-start stage: fine-tune the base policy on the references, cached by its inputs' fingerprint."""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from saferl.data.prompts import DataFiles, as_paths
from saferl.models.checkpoint import apply_umask, check_checkpoint_dir, load_vlm, save_vlm
from saferl.resources import conf_file

from .cache import MARKER, check_replaceable, commit, fingerprint, is_done, remove_stale_staging, staging_dir
from .examples import stage_examples
from .sft import train_sft

logger = logging.getLogger(__name__)

DEFAULT_WARM_START_CONFIG = conf_file("saferl", "warm_start", "default.yaml")


def load_warm_start_config(
    overrides: list[str] | None = None, path: str | Path = DEFAULT_WARM_START_CONFIG
) -> DictConfig:
    """The `saferl.warm_start` config node (conf/saferl/warm_start/default.yaml) with dotlist overrides."""
    return OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(overrides or []))


def warm_start(
    model_path: str | Path,
    train_file: DataFiles,
    cfg: DictConfig,
    output_dir: str | Path,
    progress: bool = True,
    data_config: DictConfig | dict | None = None,
) -> Path:
    """Fine-tune `model_path` on the references of `train_file`; return the checkpoint to start RL from.

    `train_file` is the RL train file (verl format, as `saferl.data to-verl` writes it) or a QI-Safe-10K
    parquet (converted the same way). `data_config` is the RL run's `data` node (image pixel bounds,
    chat-template kwargs), so the prompts match the RL prompts. Cached in `output_dir` by the fingerprint
    of every input. Whether a run warm-starts at all is `saferl.stages` (saferl.train).
    """
    model_path = check_checkpoint_dir(model_path)
    if isinstance(train_file, ListConfig):
        train_file = list(train_file)
    output_dir = Path(output_dir).expanduser().resolve()
    key, inputs = fingerprint(model_path, train_file, cfg, data_config)
    if is_done(output_dir, key):
        logger.info("warm start: %s is up to date (fingerprint %s)", output_dir, key[:12])
        return output_dir
    check_replaceable(output_dir, model_path)
    if output_dir.exists():
        logger.info("warm start: %s has no matching finished warm start; retraining", output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output_dir)

    start = time.perf_counter()
    processor, model = load_vlm(model_path)
    examples = stage_examples(train_file, processor, cfg, data_config)
    losses = train_sft(model, processor, examples, cfg, progress=progress, data_config=data_config)
    if losses:
        tail = losses[-10:]
        logger.info(
            "warm start: %d steps on %d examples, loss %.3f (first step) -> %.3f (last), %.3f (mean of the"
            " last %d) in %.0f s",
            len(losses),
            len(examples),
            losses[0],
            losses[-1],
            sum(tail) / len(tail),
            len(tail),
            time.perf_counter() - start,
        )

    staging = staging_dir(output_dir)
    try:
        save_vlm(model, processor, staging)
        check_checkpoint_dir(staging)
        marker = {
            "fingerprint": key,
            "run_id": uuid.uuid4().hex,
            "base_model": str(model_path),
            "train_files": [str(f) for f in as_paths(train_file)],
            "inputs": inputs,
            "examples": len(examples),
            "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None},
            "loss_curve": [round(x, 5) for x in losses],
            "elapsed_s": round(time.perf_counter() - start, 2),
        }
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # last: it means "complete"
        apply_umask(staging)
        commit(staging, output_dir, key)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir
