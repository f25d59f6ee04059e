"""The verl engine: hand the composed config to verl's own trainer, as `verl.trainer.main_ppo.main` does.

Nothing of verl is patched or re-implemented: saferl's parts reach verl's workers through the config
(`actor_rollout_ref.rollout.agent.default_agent_loop=safe_reflect`, `reward.reward_manager.name=
saferl_safety`, `algorithm.adv_estimator=saferl_grpo`, `data.custom_cls=QISafeDataset`) and through the
`verl.plugins` entry point, which verl imports in every process it starts, Ray workers included.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, open_dict

from saferl.engines import check_rollout_mode

logger = logging.getLogger("saferl.train")


def check_verl_engine(cfg: DictConfig) -> None:
    """What verl 0.9.1 cannot run, refused before any GPU is allocated; the cluster address handed on."""
    check_rollout_mode(cfg)
    if cfg.saferl.ray.address:  # a cluster started by scripts/slurm: verl's ray.init joins it
        with open_dict(cfg):
            cfg.ray_kwargs.ray_init.address = cfg.saferl.ray.address


def run_verl(cfg: DictConfig) -> None:
    """verl's `main_ppo.main`, minus Hydra: auto device, `validate_config`, `run_ppo` with its task runner."""
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    check_verl_engine(cfg)
    auto_set_device(cfg)
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    if cfg.trainer.use_v1:
        run_ppo(cfg, task_runner_class=TaskRunnerV1)
    else:
        from verl.trainer.main_ppo_v0 import TaskRunner

        run_ppo(cfg, task_runner_class=TaskRunner)
