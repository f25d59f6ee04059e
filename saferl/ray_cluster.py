"""How saferl's processes start or join Ray: as verl's `run_ppo` does, for training and evaluation alike.

Training hands `ray_kwargs.ray_init` to verl, whose `run_ppo` calls `ray.init` with it, merged over verl's
own runtime environment (verl/trainer/main_ppo.py:62-74). Evaluation has no verl entry point that starts
Ray, so `init_ray` repeats those lines: both then run with the same resources (the CPU platform's fake
GPUs), the same `saferl.env` in every process and the same system config.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

# Keys of `ray_kwargs.ray_init` that only a Ray started here may carry: joining a running cluster with
# them is refused by Ray (its resources are the nodes' own `ray start --num-cpus/--num-gpus`, and its
# system config is the head's `--system-config`).
LOCAL_ONLY_KEYS = ("num_cpus", "num_gpus", "_system_config")


def join_cluster(cfg: DictConfig) -> None:
    """With `saferl.ray.address` (a cluster started by scripts/slurm), make `ray_kwargs.ray_init` join it."""
    address = cfg.saferl.ray.address
    if not address:
        return
    with open_dict(cfg):
        init = cfg.ray_kwargs.ray_init
        init.address = str(address)
        for key in LOCAL_ONLY_KEYS:
            if key in init:
                init[key] = None


def ray_init_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """`ray.init`'s arguments as verl's `run_ppo` builds them (main_ppo.py:62-74): verl's runtime env
    with `ray_kwargs.ray_init.runtime_env` merged over it, and TransferQueue's switch when it is on."""
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    join_cluster(cfg)
    runtime_env = get_ppo_ray_runtime_env(cfg)
    if cfg.transfer_queue.enable:
        runtime_env.setdefault("env_vars", {})["TRANSFER_QUEUE_ENABLE"] = "1"
    init = OmegaConf.to_container(cfg.ray_kwargs.ray_init, resolve=True)
    init["runtime_env"] = OmegaConf.to_container(
        OmegaConf.merge(runtime_env, init.get("runtime_env") or {}), resolve=True
    )
    return {key: value for key, value in init.items() if value is not None}


def init_ray(cfg: DictConfig) -> None:
    """Start or join Ray for a saferl process that is not verl's trainer (evaluation)."""
    import ray

    if not ray.is_initialized():
        ray.init(**ray_init_kwargs(cfg))
