"""Evaluation's generation: verl's own rollout replicas, driven by verl's own `AgentLoopWorker`.

An evaluated answer comes out of the parts the policy was trained with: `QISafeDataset`, the prompt and
chat template, the image processing, the agent loop (`eval.agent_loop`), validation sampling and the
rollout backend (`actor_rollout_ref.rollout.name`). The replicas are started by verl's
`LLMServerManager` in standalone mode (`RolloutReplica.init_standalone`: a resource pool of their own,
`rollout.nnodes` x `rollout.n_gpus_per_node` devices, since there is no trainer to share them with),
so evaluation generates with vLLM on GPU nodes and with the `hf` backend on the CPU platform, as
training does. Judging is separate (`saferl.eval.run`), so a cached generation can be judged again by
another judge.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

import numpy as np
from omegaconf import DictConfig


class ReplicaRollout:
    def __init__(self, cfg: DictConfig) -> None:
        """Start the replicas on `actor_rollout_ref.model.path` and an agent-loop worker in this process
        (the caller has run `saferl.ray_cluster.init_ray`).

        `cfg` is the whole resolved config: verl's server manager and agent-loop worker read
        `actor_rollout_ref`, `data` and the agent-loop registry from it. No reward worker: evaluation
        judges its cached answers in a pass of its own.
        """
        from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
        from verl.workers.rollout.llm_server import LLMServerManager

        self.cfg = cfg
        self.servers = LLMServerManager.create(cfg)
        self.agent_worker = AgentLoopWorker(
            cfg, llm_client=self.servers.get_client(), reward_loop_worker_handles=None
        )

    def generate(
        self, rows: dict[str, Any], *, repeats: int, validate: bool, agent_name: str | None, step: int
    ) -> Any:
        """Prompt batch (verl's collated rows) -> the loop's `DataProto`: `repeats` trajectories per
        prompt (interleaved, sharing a uid), with the rows' own fields beside the loop's."""
        from verl import DataProto

        batch = DataProto.from_single_dict(rows)
        batch.non_tensor_batch["uid"] = np.array([uuid.uuid4().hex for _ in range(len(batch))], dtype=object)
        batch = batch.repeat(repeat_times=repeats, interleave=True)
        # repeat() shares each row's PIL image between its copies, and the agent loop decodes images
        # in threads: PIL's lazy loading is not thread-safe. Give every trajectory its own prompt.
        prompts = np.empty(len(batch), dtype=object)
        prompts[:] = [copy.deepcopy(p) for p in batch.non_tensor_batch["raw_prompt"]]
        batch.non_tensor_batch["raw_prompt"] = prompts
        if agent_name:
            batch.non_tensor_batch["agent_name"] = np.array([agent_name] * len(batch), dtype=object)
        batch.meta_info.update({"validate": validate, "global_steps": step})
        output = asyncio.run(self.agent_worker.generate_sequences(batch))
        for key, value in batch.non_tensor_batch.items():
            output.non_tensor_batch.setdefault(key, value)
        return output

    def shutdown(self) -> None:
        """Stop the replicas and give back their devices, so the next checkpoint's replicas can start.

        verl's manager has no teardown: a standalone replica's servers and workers are plain Ray actors
        in a placement group of its own (`RayResourcePool.pgs`)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        groups = []
        for replica in self.servers.get_replicas():
            for actor in [*replica.servers, *replica.workers]:
                ray.kill(actor)
            for group in (replica.resource_pool.pgs if replica.resource_pool else None) or []:
                remove_placement_group(group)
                groups.append(group)
        wait_released(groups)


def wait_released(groups: list[Any], timeout_s: float = 60.0) -> None:
    """Block until Ray shows the removed placement groups' resources as available again.

    Ray removes a placement group asynchronously: right after `remove_placement_group` its devices can
    still be counted as taken, and verl's next resource pool check (`RayResourcePoolManager.
    _check_resource_available`) then fails with "Total available GPUs 0" (seen once in CI under load)."""
    import time
    from collections import Counter

    import ray

    needed: Counter[str] = Counter()
    for group in groups:
        for bundle in group.bundle_specs:
            needed.update({k: float(v) for k, v in bundle.items()})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        available = ray.available_resources()
        if all(available.get(key, 0.0) >= amount for key, amount in needed.items()):
            return
        time.sleep(0.1)


def decode_responses(output: Any, tokenizer: Any) -> list[str]:
    """The response text of each trajectory: its response tokens under the attention mask, special
    tokens dropped (what a judge and a reader see)."""
    responses = output.batch["responses"]
    mask = output.batch["attention_mask"][:, -responses.shape[1] :]
    return [
        tokenizer.decode(responses[i][mask[i].bool()], skip_special_tokens=True)
        for i in range(len(responses))
    ]
