"""Routes verl agent-loop `generate` calls to a pool of Ray-hosted `HFGenerationServer` actors.

verl's agent loops only need an object with `LLMServerClient.generate(request_id, *, prompt_ids,
sampling_params, image_data, ...)`. This manager is that object for the CPU servers:

* Request-id AFFINITY: a multi-turn trajectory (reflect, then correct) reuses its request id, and on
  vLLM/SGLang that lands on the server holding its prefix cache. We keep the same contract (same id ->
  same server; an LRU of the last 10,000 ids) so behaviour and metrics match the GPU path.
* Otherwise LEAST-LOADED: the server with the fewest requests in flight from this client, ties by index,
  which spreads a burst of new trajectories evenly and keeps every actor's batches full.

One actor per CPU core is the intended layout: each actor runs its own `generate` loop on
`num_cpus_per_server` torch threads, so N actors decode N batches in parallel without fighting over
cores.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from typing import Any

import numpy as np
import ray
from PIL import Image
from verl.workers.rollout.replica import TokenOutput

from rollout.hf_server import DEFAULT_MAX_TOKENS, HFGenerationServer

AFFINITY_CAPACITY = 10_000


def to_wire_images(images: list[Any] | None) -> list[Any] | None:
    """RGB PIL images as HxWx3 uint8 arrays: Ray ships numpy buffers without pickling pixels and the
    actor reads them zero-copy, which roughly halves the per-request transfer cost of an image. The
    image processor gives bit-identical features for the array and the PIL image (tested)."""
    if not images:
        return None
    return [np.array(img) if isinstance(img, Image.Image) and img.mode == "RGB" else img for img in images]


class HFServerManager:
    """Duck-typed `LLMServerClient` over Ray actors that each wrap one `HFGenerationServer`."""

    def __init__(self, servers: list[Any], affinity_capacity: int = AFFINITY_CAPACITY) -> None:
        if not servers:
            raise ValueError("HFServerManager needs at least one server actor")
        self.servers = list(servers)
        self.in_flight = [0] * len(self.servers)
        self.affinity_capacity = int(affinity_capacity)
        self._affinity: OrderedDict[str, int] = OrderedDict()

    @classmethod
    def start(
        cls,
        model_path: str,
        num_servers: int = 2,
        num_cpus_per_server: int = 1,
        device: str = "cpu",
        max_batch_size: int = 8,
        batch_wait_ms: float = 5.0,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> HFServerManager:
        """Start `num_servers` actors (the caller has run `ray.init`) and wait until all are loaded."""
        if num_servers < 1:
            raise ValueError(f"num_servers={num_servers} must be >= 1")
        actor_cls = ray.remote(num_cpus=num_cpus_per_server)(HFGenerationServer)
        servers = [
            actor_cls.remote(
                str(model_path),
                device=device,
                max_batch_size=max_batch_size,
                batch_wait_ms=batch_wait_ms,
                torch_threads=num_cpus_per_server,
                default_max_tokens=default_max_tokens,
            )
            for _ in range(num_servers)
        ]
        try:
            ray.get([s.ready.remote() for s in servers])
        except Exception:
            for s in servers:
                ray.kill(s)
            raise
        return cls(servers)

    # -- routing ------------------------------------------------------------------------------------

    def server_of(self, request_id: str) -> int | None:
        """Index of the server `request_id` is pinned to, or None if it has not been routed (or aged out)."""
        return self._affinity.get(str(request_id))

    def _route(self, request_id: str) -> int:
        key = str(request_id)
        index = self._affinity.get(key)
        if index is not None:
            self._affinity.move_to_end(key)
            return index
        index = min(range(len(self.servers)), key=lambda i: (self.in_flight[i], i))
        self._affinity[key] = index
        if len(self._affinity) > self.affinity_capacity:
            self._affinity.popitem(last=False)
        return index

    # -- the LLMServerClient contract ---------------------------------------------------------------

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """Generate on the request's server. Extra verl kwargs (priority, mm_processor_output) are ignored."""
        if video_data:
            raise ValueError("HFServerManager does not support video_data (image_data only)")
        if audio_data:
            raise ValueError("HFServerManager does not support audio_data (image_data only)")
        if int((sampling_params or {}).get("n", 1) or 1) != 1:
            raise ValueError(
                f"sampling_params n={sampling_params['n']} is not supported: one sequence per generate "
                "call (verl's agent loop repeats each prompt itself; set rollout.n there)"
            )
        index = self._route(request_id)
        self.in_flight[index] += 1
        try:
            return await self.servers[index].generate.remote(
                list(prompt_ids), dict(sampling_params or {}), to_wire_images(image_data)
            )
        finally:
            self.in_flight[index] -= 1

    # -- weight sync ----------------------------------------------------------------------------------

    def update_weights(self, state_dict: dict[str, Any], version: int) -> None:
        """Push the trainer's policy weights to every server (one object-store copy shared by all) and
        wait until each serves `version`. Call between rollouts, with no request in flight."""
        if any(self.in_flight):
            raise RuntimeError(f"update_weights with requests in flight: {self.in_flight}")
        cpu_state = {k: v.detach().to("cpu") for k, v in state_dict.items()}
        ref = ray.put(cpu_state)
        served = ray.get([s.update_weights.remote(ref, int(version)) for s in self.servers])
        if any(v != version for v in served):
            raise RuntimeError(f"servers report weight versions {served}, expected {version}")

    # -- introspection and teardown -----------------------------------------------------------------

    def stats(self) -> list[dict[str, Any]]:
        """Each server's `HFGenerationServer.stats()`, plus its index and this client's in-flight count."""
        per_server = ray.get([s.stats.remote() for s in self.servers])
        return [{"server": i, "in_flight": self.in_flight[i], **st} for i, st in enumerate(per_server)]

    async def stats_async(self) -> list[dict[str, Any]]:
        """`stats()` for callers already inside an event loop (where `ray.get` would block it)."""
        per_server = await asyncio.gather(*[s.stats.remote() for s in self.servers])
        return [{"server": i, "in_flight": self.in_flight[i], **st} for i, st in enumerate(per_server)]

    def shutdown(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):  # already dead: nothing to release
                ray.kill(server)
        self.servers = []
        self.in_flight = []
        self._affinity.clear()
