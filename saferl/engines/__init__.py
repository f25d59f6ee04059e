"""Training engines: `verl` (verl's own trainer, clusters) and `local` (one machine)."""

from __future__ import annotations

from omegaconf import DictConfig


def check_rollout_mode(cfg: DictConfig) -> None:
    """`saferl.rollout.mode=extra` is refused by both engines, for one reason each, said in one place."""
    if cfg.saferl.rollout.mode == "extra":
        raise ValueError(
            "saferl.rollout.mode=extra is not supported: verl 0.9.1's agent loop yields one trajectory per "
            "prompt sample, so the verl engine cannot add the correction to the group, and the local engine "
            "does not yet (the correction would need its own reward and tensors); use saferl.rollout.mode=replace"
        )
