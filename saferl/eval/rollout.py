"""Evaluation's generation: Ray-hosted HF servers driven by verl's own `AgentLoopWorker`.

An evaluated answer comes out of the parts the policy was trained with: `QISafeDataset`, the prompt and
chat template, the image processing, the agent loop (`eval.agent_loop`) and validation sampling, through
verl's agent-loop worker. The servers are the same `HFGenerationServer` the `hf` rollout backend serves
in training (`rollout.hf_replica`), started here as a standalone pool (`rollout.server_manager`), so
evaluation runs on one machine, CPU or one GPU (`saferl.local`). On GPU nodes training rolls out with
vLLM; evaluation does not drive verl's vLLM replicas yet. Judging is separate (`saferl.eval.run`), so
a cached generation can be judged again by another judge.
"""

from __future__ import annotations

import asyncio
import copy
import os
import uuid
from typing import Any

import numpy as np
from omegaconf import DictConfig


def init_ray(cfg: DictConfig) -> None:
    """Join `saferl.ray.address` or start Ray here, and give this process's torch the cores left."""
    import ray
    import torch

    if not ray.is_initialized():
        address = cfg.saferl.ray.address
        env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
        if address:
            ray.init(address=str(address), runtime_env=env, log_to_driver=True)
        else:
            ray.init(
                num_cpus=cfg.saferl.ray.num_cpus,
                include_dashboard=False,
                runtime_env=env,
                _system_config={
                    "max_direct_call_object_size": int(cfg.saferl.ray.max_direct_call_object_size)
                },
            )
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = cfg.saferl.local.torch_threads or max(1, min(cpus, os.cpu_count() or 1))
    torch.set_num_threads(int(threads))


class LocalRollout:
    def __init__(self, cfg: DictConfig, policy_path: str) -> None:
        """Start the servers on `policy_path` and verl's agent-loop worker (the caller has run `ray.init`).

        `cfg` is the whole resolved config: the worker reads `actor_rollout_ref`, `data` and the
        agent-loop registry from it, the servers `saferl.local`. No reward worker: evaluation judges
        its cached answers in a pass of its own.
        """
        from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

        from rollout.server_manager import HFServerManager

        local = cfg.saferl.local
        self.cfg = cfg
        self.servers = HFServerManager.start(
            policy_path,
            num_servers=int(local.num_servers),
            num_cpus_per_server=int(local.num_cpus_per_server),
            device=str(local.device),
            max_batch_size=int(local.max_batch_size),
            batch_wait_ms=float(local.batch_wait_ms),
            # As verl's vLLM server: a request that names no max_tokens (verl's single_turn_agent,
            # which validation and evaluation use) may fill the whole response budget.
            default_max_tokens=int(cfg.actor_rollout_ref.rollout.response_length),
        )
        self.agent_worker = AgentLoopWorker(cfg, llm_client=self.servers, reward_loop_worker_handles=None)

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
        self.servers.shutdown()


def decode_responses(output: Any, tokenizer: Any) -> list[str]:
    """The response text of each trajectory: its response tokens under the attention mask, special
    tokens dropped (what a judge and a reader see)."""
    responses = output.batch["responses"]
    mask = output.batch["attention_mask"][:, -responses.shape[1] :]
    return [
        tokenizer.decode(responses[i][mask[i].bool()], skip_special_tokens=True)
        for i in range(len(responses))
    ]
