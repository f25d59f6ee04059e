"""Rollout backend `hf` for verl's own trainer: `actor_rollout_ref.rollout.name=hf`.

verl ships vLLM, SGLang and TensorRT-LLM rollout servers, none of which runs on a CPU. This backend puts
the project's batching `HFGenerationServer` behind verl's two rollout contracts, so that verl's trainer,
agent loop and weight sync drive it exactly as they drive vLLM on GPU nodes:

- `HFReplica` (a `RolloutReplica`, registered in verl's public `RolloutReplicaRegistry`): launches one
  Ray actor per replica hosting an `HFServer`, whose `generate(...)` verl's `LLMServerClient` calls;
- `HFServerAdapter` (a `BaseRollout`, the in-worker side): lives in each actor worker; verl's naive
  checkpoint engine hands it the FSDP engine's full weights after every update, and the replica's
  leader rank pushes them to its server. Registering it needs verl's private adapter registry
  (`saferl.verl_internals.register_rollout_adapter`).

Server settings come from `actor_rollout_ref.rollout.engine_kwargs.hf` (verl's per-backend engine
knobs): `max_batch_size` (default `max_num_seqs`), `batch_wait_ms`, `torch_threads` (default: the node's
cores shared by its servers).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
import ray.util.scheduling_strategies
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

from saferl.verl_internals import register_rollout_adapter

NAME = "hf"
logger = logging.getLogger(__name__)


def server_name(replica_rank: int) -> str:
    """The named Ray actor of a replica's server: how the in-worker adapter finds it for weight sync."""
    return f"saferl_hf_rollout_server_{replica_rank}"


class HFServer:
    """An `HFGenerationServer` with the control methods verl's replica and trainer call on every server.

    On a CPU there is no device memory to free between rollout and training, so sleep, wake-up and the
    KV-cache calls have nothing to do; generation and weight updates are the server's own."""

    def __init__(self, model_path: str, **server_kwargs: Any) -> None:
        # Imported here, not at the top: `rollout.hf_server` imports verl, whose plugin loader imports this
        # module, so a process that imports the server first would meet a half-initialised module.
        from rollout.hf_server import HFGenerationServer

        self.server = HFGenerationServer(model_path, **server_kwargs)

    async def ready(self) -> bool:
        return True

    async def generate(
        self,
        request_id: str | None = None,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        **kwargs: Any,
    ) -> TokenOutput:
        if video_data:
            raise ValueError("the hf rollout backend serves images only, not video_data")
        return await self.server.generate(prompt_ids, sampling_params, image_data)

    async def update_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        expected = set(self.server.model.state_dict())
        missing, unexpected = expected - set(state_dict), set(state_dict) - expected
        if missing or unexpected:
            raise RuntimeError(
                f"hf rollout weight sync: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        return await self.server.update_weights(state_dict, version)

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    async def wake_up(self) -> None: ...
    async def sleep(self) -> None: ...
    async def clear_kv_cache(self) -> None: ...
    async def release_kv_cache(self) -> None: ...
    async def resume_kv_cache(self) -> None: ...
    async def abort_all_requests(self, reject_request: bool = False) -> None: ...
    async def resume_generation(self) -> None: ...
    async def start_profile(self, **kwargs: Any) -> None: ...
    async def stop_profile(self) -> None: ...


def server_kwargs(config: Any, servers_per_node: int = 1) -> dict[str, Any]:
    """`HFGenerationServer` settings from verl's rollout config (a RolloutConfig or a DictConfig).
    Unless set, a server's threads are the node's cores shared by the node's servers."""
    hf = dict((config.get("engine_kwargs") or {}).get(NAME) or {})
    unknown = set(hf) - {"max_batch_size", "batch_wait_ms", "torch_threads"}
    if unknown:
        raise ValueError(f"actor_rollout_ref.rollout.engine_kwargs.hf: unknown keys {sorted(unknown)}")
    return {
        "max_batch_size": int(hf.get("max_batch_size") or config.get("max_num_seqs")),
        "batch_wait_ms": float(hf.get("batch_wait_ms", 5.0)),
        "torch_threads": int(
            hf.get("torch_threads") or max(1, len(os.sched_getaffinity(0)) // servers_per_node)
        ),
        # As verl's vLLM server: a request that names no max_tokens may fill the response budget.
        "default_max_tokens": int(config.get("response_length")),
    }


class HFReplica(RolloutReplica):
    """One HF server per replica, started in hybrid mode beside the replica's first actor worker.

    As verl's vLLM replica does (vllm_async_server.py `launch_servers`), the server goes to that worker's
    node and sees that worker's accelerator, so on a GPU node it generates on the GPU the worker trains
    on, and on the CPU platform on the CPU (verl's device name)."""

    async def launch_servers(self) -> None:
        from verl.plugin.platform import get_platform
        from verl.utils.device import get_device_name, get_resource_name

        path = self.model_config.get("local_path") or self.model_config.path
        node_id, accelerator = await self.workers[0].__ray_call__.remote(
            lambda worker: (
                ray.get_runtime_context().get_node_id(),
                ray.get_runtime_context().get_accelerator_ids()[get_resource_name()][0],
            )
        )
        platform = get_platform()
        env_vars = {var: "1" for var in platform.ray_noset_envvars()}
        if get_device_name() != "cpu":
            env_vars[platform.visible_devices_envvar()] = str(accelerator)
        actor = ray.remote(num_cpus=0)(HFServer).options(
            name=server_name(self.replica_rank),
            max_concurrency=self.max_concurrency,
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id, soft=False
            ),
            runtime_env={"env_vars": env_vars},
        )
        per_node = max(1, self.gpus_per_node // self.world_size)  # replicas (one server each) per node
        server = actor.remote(str(path), device=get_device_name(), **server_kwargs(self.config, per_node))
        await server.ready.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = server_name(self.replica_rank)


class HFServerAdapter(BaseRollout):
    """The worker side of naive weight sync: every rank iterates the weights (gathering a sharded
    tensor is a collective), and the replica's leader sends the full state to its server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank, self.is_leader = rank // size, rank % size == 0
        self.version = 0

    async def resume(self, tags: list[str]) -> None:
        pass

    async def release(self) -> None:
        pass

    async def update_weights(self, weights: Any, wire_format: str = "named_tensors", **kwargs: Any) -> None:
        if wire_format != "named_tensors":
            raise ValueError(f"the hf rollout backend takes full named tensors, not {wire_format!r}")
        state = {}
        for name, tensor in weights:
            if self.is_leader:
                state[name] = tensor.detach().to("cpu", torch.float32).clone()
        if not self.is_leader:
            return
        steps = kwargs.get("global_steps")
        self.version = self.version + 1 if steps is None else int(steps)
        server = ray.get_actor(server_name(self.replica_rank))
        served = await server.update_weights.remote(state, self.version)
        if served != self.version:
            raise RuntimeError(
                f"hf rollout server {self.replica_rank} serves version {served}, not {self.version}"
            )


RolloutReplicaRegistry.register(NAME, lambda: HFReplica)
register_rollout_adapter(NAME, f"{__name__}.HFServerAdapter")
