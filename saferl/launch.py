"""What every command does to its composed config before verl starts (`saferl.train`, `saferl.eval`,
`saferl.srpo`): the platform's environment into this process and every Ray process verl starts, and the
tiny model's path when the experiment asks for it. Kept apart from the training app so evaluation does
not import it."""

from __future__ import annotations

import logging
import os

import psutil
from omegaconf import DictConfig, open_dict

from saferl.models.tiny import ensure_tiny_model

logger = logging.getLogger("saferl.train")


def use_tiny_model(cfg: DictConfig) -> None:
    """`saferl.tiny_model=bpe|qwen`: build the tiny model on first use (cached) and point
    `actor_rollout_ref.model.path` at it; training and evaluation both start here."""
    if cfg.saferl.tiny_model:
        path = ensure_tiny_model(tokenizer=str(cfg.saferl.tiny_model))
        logger.info("tiny model (%s): %s", cfg.saferl.tiny_model, path)
        cfg.actor_rollout_ref.model.path = str(path)


def apply_platform_env(cfg: DictConfig) -> None:
    """`saferl.env` into this process and into every Ray process verl starts (its job runtime_env).

    Must run before verl is imported in this process: verl resolves its platform once, on first use."""
    env = {str(k): str(v) for k, v in (cfg.saferl.get("env") or {}).items()}
    os.environ.update(env)
    with open_dict(cfg):
        ray_env_vars(cfg).update(env)


def ray_env_vars(cfg: DictConfig) -> DictConfig:
    """`ray_kwargs.ray_init.runtime_env.env_vars`: what verl's ray.init hands every Ray process."""
    runtime_env = cfg.ray_kwargs.ray_init.runtime_env
    with open_dict(cfg):
        if runtime_env.get("env_vars") is None:
            runtime_env.env_vars = {}
    return runtime_env.env_vars


# transfer_queue (verl's data plane) runs its tensor work on TQ_NUM_THREADS torch threads, default 8
# (transfer_queue/client.py:42, storage/simple_storage.py:73), and caps that at the physical cores with a
# WARNING on every put and get (utils/common.py:102): on 2 cores, 40% of a tiny run's output.
TQ_DEFAULT_THREADS = 8


def worker_output_env() -> dict[str, str]:
    """Environment that keeps the workers' output in order and free of repeated noise: unbuffered
    stdout (a worker's prints reach the driver when printed, not when its buffer fills, so the console's
    step line follows the step), and transfer_queue's thread count already at its cap."""
    env = {"PYTHONUNBUFFERED": "1"}
    cores = psutil.cpu_count(logical=False) or 1
    if "TQ_NUM_THREADS" not in os.environ and cores < TQ_DEFAULT_THREADS:
        env["TQ_NUM_THREADS"] = str(cores)
    return env
