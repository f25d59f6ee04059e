"""verl's `ppo_trainer` config composed the way verl's own entry point composes it, plus saferl's nodes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from rewards.rubric import load_reward_config
from rollout.reflect_loop import load_rollout_config


def compose_trainer_config(
    model: Path, overrides: Sequence[str] = (), reward: Sequence[str] = (), rollout: Sequence[str] = ()
):
    """`overrides` are verl keys; `reward` and `rollout` are `saferl.reward` / `saferl.rollout` keys."""
    with initialize_config_module("verl.trainer.config", version_base=None):
        cfg = compose("ppo_trainer", overrides=[f"actor_rollout_ref.model.path={model}", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.saferl = {
        "reward": load_reward_config(overrides=list(reward)),
        "rollout": load_rollout_config(overrides=list(rollout)),
    }
    return cfg
