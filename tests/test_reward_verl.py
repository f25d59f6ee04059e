"""The reward manager inside verl's own reward loop: `RewardLoopWorker` as a Ray actor on loopback.

The worker loads our manager by name (`reward.reward_manager.name=saferl_safety`), which exists in the
actor's process only because `import verl` loaded the saferl plugin there. Each sample reaches it the
way verl's agent loop sends it: token tensors plus the dataset row (raw_prompt with the image bytes,
and the fields QISafeDataset lifts).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl_config import compose_trainer_config

from saferl.models.checkpoint import load_vlm

HARMFUL = (
    "<think>The user wants this. Sure, I will explain.</think>Sure! Step 1: get the tools. Step 2: do it."
)


@pytest.fixture(scope="module")
def rows(qi_val_dataset) -> list[dict]:
    return [qi_val_dataset[i] for i in range(0, len(qi_val_dataset), 10)]


def trainer_config(model: Path, **reward_overrides: str):
    reward = [f"{k}={v}" for k, v in reward_overrides.items()]
    return compose_trainer_config(model, ["reward.reward_manager.name=saferl_safety"], reward=reward)


def batch(rows: list[dict], responses: list[str], tokenizer) -> DataProto:
    """Several samples shaped as verl's agent loop shapes one (it sends them to the worker in a batch)."""
    prompts = [torch.tensor(tokenizer.encode(r["question"]), dtype=torch.int64) for r in rows]
    answers = [torch.tensor(tokenizer.encode(text), dtype=torch.int64) for text in responses]
    pad = torch.nn.utils.rnn.pad_sequence
    p, a = pad(prompts, batch_first=True), pad(answers, batch_first=True)
    mask = torch.cat(
        [
            pad([torch.ones_like(x) for x in prompts], batch_first=True),
            pad([torch.ones_like(x) for x in answers], batch_first=True),
        ],
        dim=1,
    )
    tensors = {"prompts": p, "responses": a, "attention_mask": mask, "input_ids": torch.cat([p, a], dim=1)}
    non_tensor = {key: np.array([row[key] for row in rows] + [None], dtype=object)[:-1] for key in rows[0]}
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensor)


def test_rule_judge_in_verls_reward_loop(ray_cluster, rows: list[dict], tiny_model_dir: Path) -> None:
    cfg = trainer_config(tiny_model_dir)
    processor, _ = load_vlm(tiny_model_dir)
    worker = ray.remote(RewardLoopWorker).remote(cfg)
    unsafe = [r for r in rows if r["safety_label"] == "unsafe"]
    responses = [r["extra_info"]["reference"] for r in rows] + [HARMFUL for _ in unsafe]
    outs = ray.get(worker.compute_score_batch.remote(batch(rows + unsafe, responses, processor.tokenizer)))

    assert len(outs) == len(rows) + len(unsafe)
    keys = {frozenset(o["reward_extra_info"]) for o in outs}
    assert len(keys) == 1  # verl stacks extra info by key: every sample must carry the same keys
    info_keys = next(iter(keys))
    assert {
        "criterion/safety_awareness",
        "criterion/visual_grounding",
        "penalty/hallucination",
        "penalty/contradiction",
        "penalty/injection",
        "gated",
        "flags",
        "judge_error",
    } <= info_keys
    references, harmful = outs[: len(rows)], outs[len(rows) :]
    assert all(o["reward_score"] >= 9.0 for o in references), [o["reward_score"] for o in references]
    assert all(o["reward_extra_info"]["gated"] and o["reward_score"] < 1.0 for o in harmful)
    assert all("harmful" in o["reward_extra_info"]["flags"] for o in harmful)


def test_judge_failures_in_verls_reward_loop(ray_cluster, rows: list[dict], tiny_model_dir: Path) -> None:
    """A judge endpoint that is down: excluded (NaN) samples, then the step fails naming the endpoint."""
    dead = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    cfg = trainer_config(
        tiny_model_dir,
        **{
            "judge.kind": "openai",
            "judge.openai.base_url": dead,
            "judge.openai.max_retries": 0,
            "judge.openai.timeout_s": 2,
            "faults.min_samples": 4,
            "faults.max_failure_fraction": 0.5,
        },
    )
    processor, _ = load_vlm(tiny_model_dir)
    worker = ray.remote(RewardLoopWorker).remote(cfg)
    first = ray.get(
        worker.compute_score_batch.remote(batch(rows[:3], ["<think>x</think>y"] * 3, processor.tokenizer))
    )
    assert all(math.isnan(o["reward_score"]) and o["reward_extra_info"]["judge_failed"] for o in first)
    assert all("connection" in o["reward_extra_info"]["judge_error"] for o in first)
    with pytest.raises(ray.exceptions.RayTaskError, match=r"judge at http://127.0.0.1:9/v1 failed on 4 of 4"):
        ray.get(
            worker.compute_score_batch.remote(batch(rows[:1], ["<think>x</think>y"], processor.tokenizer))
        )
