"""The verl internals saferl leans on (`saferl/verl_internals.py`), checked against the installed verl.

Each test reads what the workaround depends on in verl's own source or registry, so a verl upgrade that
changes it fails here, loudly and by name, rather than deep inside a CPU training run. The platform
checks run in a fresh process with `VERL_PLATFORM=cpu`, as every Ray process of a CPU run does.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest
import verl
from verl.single_controller.base import worker
from verl.utils import device, distributed
from verl.workers.rollout import base as rollout_base

from saferl.verl_internals import register_rollout_adapter, registered_agent_loops


def test_verl_is_the_pinned_version() -> None:
    assert verl.__version__ == "0.9.1"


def test_verl_still_builds_the_doubled_cpu_backend_and_skips_an_existing_group() -> None:
    """1. The process group: verl names `cpu:gloo,<device>:<backend>` (on CPU a device twice, which
    torch refuses), inits only without a group, and `Worker.__init__` calls the platform's set_device
    first when Ray leaves CUDA_VISIBLE_DEVICES alone."""
    source = inspect.getsource(distributed.initialize_global_process_group_ray)
    assert 'f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"' in source
    assert "if not torch.distributed.is_initialized():" in source
    init = inspect.getsource(worker.Worker.__init__) + inspect.getsource(worker.Worker)
    assert "is_ray_noset_visible_devices" in init and "get_torch_device().set_device(" in init


def test_verls_device_id_is_the_platforms_current_device() -> None:
    """2. The device "index": verl moves tensors to `get_device_id()`, which is the platform's answer."""
    assert "get_platform().current_device()" in inspect.getsource(device.get_device_id)


def test_verls_rollout_adapters_live_in_a_private_dict() -> None:
    """3. The in-worker adapter: `get_rollout_class` reads `_ROLLOUT_REGISTRY`, and nothing public adds to it."""
    assert isinstance(rollout_base._ROLLOUT_REGISTRY, dict)
    assert "_ROLLOUT_REGISTRY[(rollout_name, mode)]" in inspect.getsource(rollout_base.get_rollout_class)
    assert not [n for n in dir(rollout_base) if "register" in n.lower() and not n.startswith("_")]
    import rollout.hf_replica  # noqa: F401  (loaded by the verl plugin in every verl process)

    assert rollout_base.get_rollout_class("hf").__name__ == "HFServerAdapter"
    with pytest.raises(ValueError, match="already"):
        register_rollout_adapter("hf", "somewhere.Else")


def test_the_dry_run_reads_the_agent_loop_registry_that_verls_register_fills() -> None:
    """4. The dry run's look at registered agent loops: verl's public `register` writes the private dict."""
    from verl.experimental.agent_loop import agent_loop

    assert "_agent_loop_registry[agent_name]" in inspect.getsource(agent_loop.register)
    import rollout.reflect_loop  # noqa: F401  (the verl plugin imports it in every verl process)

    assert {"safe_reflect", "single_turn_agent"} <= registered_agent_loops()


PROBE = """
import json, os, torch
import torch.distributed as dist
from verl.plugin.platform import get_platform
from verl.utils.device import get_device_id, get_device_name, get_nccl_backend, get_torch_device
platform = get_platform()
get_torch_device().set_device(0)  # what Worker.__init__ does first
x = torch.zeros(2).to(get_device_id())
print(json.dumps({
    "platform": type(platform).__name__, "device": get_device_name(), "backend": get_nccl_backend(),
    "device_id": get_device_id(), "tensor": str(x.device), "group": dist.is_initialized(),
    "world": dist.get_world_size() if dist.is_initialized() else None,
    "ray_resource": platform.ray_resource_name(),
}))
"""


def _probe(**env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VERL_PLATFORM": "cpu", **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_cpu_platform_answers_for_verl_in_a_fresh_process() -> None:
    found = _probe()
    assert found["platform"] == "CPUPlatform"
    assert (found["device"], found["backend"], found["device_id"], found["tensor"]) == (
        "cpu",
        "gloo",
        "cpu",
        "cpu",
    )
    assert found["ray_resource"] == "GPU"  # verl's resource pools count GPU bundles: Ray gets fake GPUs
    assert found["group"] is False  # not a verl worker process: no group started


def test_set_device_starts_the_workers_gloo_group() -> None:
    worker_env = {"WG_PREFIX": "test", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    found = _probe(**worker_env, MASTER_PORT=str(29_500 + os.getpid() % 1000))
    assert found["group"] is True and found["world"] == 1


def test_verls_fsdp_engine_can_import_what_it_wants_from_the_installed_trl() -> None:
    """With TRL installed (SRPO's DPO), verl's FSDP engine imports AutoModelForCausalLMWithValueHead from
    `trl.experimental.ppo`, else `trl` (verl/models/transformers/monkey_patch.py:352-356, on every actor
    build). TRL 1.13 removed both, and every GRPO run then fails at its first worker: setup.py pins
    below it."""
    import warnings

    from verl.models.transformers import monkey_patch
    from verl.utils.import_utils import is_trl_available

    source = inspect.getsource(monkey_patch.apply_monkey_patch)
    assert "from trl.experimental.ppo import AutoModelForCausalLMWithValueHead" in source
    assert is_trl_available()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from trl.experimental.ppo import AutoModelForCausalLMWithValueHead
        except ImportError:
            from trl import AutoModelForCausalLMWithValueHead
    assert AutoModelForCausalLMWithValueHead.state_dict


def test_verls_flattened_defaults_file_holds_typed_defaults() -> None:
    """5. verl ships its ppo_trainer config flattened into one generated file; the start reads value
    types from it. It must still be there, generated from ppo_trainer, with typed leaves."""
    from omegaconf import OmegaConf

    from saferl.verl_internals import verl_defaults_file

    path = verl_defaults_file()
    assert path.is_file() and "generate_trainer_config.sh" in path.read_text().splitlines()[0]
    defaults = OmegaConf.load(path)
    assert isinstance(defaults.actor_rollout_ref.rollout.n, int)
    assert isinstance(defaults.trainer.val_before_train, bool)
    assert isinstance(defaults.actor_rollout_ref.actor.optim.lr, float)
