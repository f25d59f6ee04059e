"""The places where saferl leans on verl 0.9.1 internals, and nowhere else.

verl's own trainer runs on a CPU-only machine through public plugin points (a platform in
`PlatformRegistry`, a rollout replica in `RolloutReplicaRegistry`), except for three spots that have no
public hook (1-3 below); the dry run also reads one private registry (4). Each is kept here, says which
verl line it depends on, and is checked by
`tests/test_verl_internals.py`, which reads verl's installed source and fails loudly if an upgrade
changes what the workaround relies on. verl is pinned exactly (setup.py); nothing here edits or patches
verl's code.
"""

from __future__ import annotations

import os

# 1. The process group. verl/utils/distributed.py:89 (`initialize_global_process_group_ray`, called by
#    verl/workers/engine_workers.py:89) builds the backend string f"cpu:gloo,{device}:{backend}", which on
#    CPU is "cpu:gloo,cpu:gloo"; torch refuses a device named twice. verl only calls init_process_group
#    when no group exists yet (distributed.py:90), and `Worker.__init__` calls the platform's `set_device`
#    first when RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES is set (single_controller/base/worker.py:281).
#    So the CPU platform's `set_device` starts a plain gloo group itself, before verl would.
WORKER_ENV = ("WG_PREFIX", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def start_gloo_process_group() -> bool:
    """Start the worker's gloo group if this is a verl worker process and none exists; True if started.

    Only verl's worker-group processes carry all of `WORKER_ENV` (set by RayWorkerGroup), so the driver,
    the task runner and the rollout servers never join a group by accident."""
    import torch.distributed as dist

    env = os.environ
    if not dist.is_available() or dist.is_initialized() or not all(k in env for k in WORKER_ENV):
        return False
    dist.init_process_group("gloo", rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]))
    return True


# 2. The device "index". verl moves tensors with `.to(get_device_id())` and `to_empty(device=
#    get_device_id())` (verl/utils/device.py:114-120 returns `platform.current_device()`, used in
#    verl/utils/fsdp_utils.py and verl/workers/engine/fsdp/transformer_impl.py). An int there means
#    cuda:N, so on CPU the "index" must be the device string itself, although the platform API says int.
CPU_DEVICE_INDEX = "cpu"


# 3. The in-worker rollout adapter. verl/workers/rollout/base.py:89 `_ROLLOUT_REGISTRY` maps
#    (rollout name, mode) to the adapter class that lives inside each actor worker and receives the
#    weights; `get_rollout_class` (base.py:96) reads it, and verl offers no public register function.
#    Adding a key is a data insert into that dict, not a code change.
def register_rollout_adapter(name: str, fqn: str, mode: str = "async") -> None:
    """Make `actor_rollout_ref.rollout.name=<name>` resolve to the adapter class `fqn` in verl's workers."""
    from verl.workers.rollout import base

    registry = base._ROLLOUT_REGISTRY
    existing = registry.get((name, mode))
    if existing is not None and existing != fqn:
        raise ValueError(f"verl rollout adapter ({name!r}, {mode!r}) is already {existing}, not {fqn}")
    registry[(name, mode)] = fqn


# 4. The agent-loop registry, read (not written) by the dry run to say whether `default_agent_loop` names a
#    registered loop before a job is submitted. verl/experimental/agent_loop/agent_loop.py:467 keeps it in
#    the private `_agent_loop_registry`, which its public `register` (agent_loop.py:470) fills.
def registered_agent_loops() -> set[str]:
    """The names of the agent loops registered in this process (`import verl` loads saferl's)."""
    from verl.experimental.agent_loop import agent_loop

    return set(agent_loop._agent_loop_registry)
