"""The local engine's policy update on a real rollout: verl's AgentLoopWorker running `safe_reflect` on
the Ray-hosted HF servers with the tiny model, rewards from the rule judge through verl's RewardLoopWorker,
then `saferl.engines.actor` (verl's core_algos) on that very batch.

What must hold for GRPO to be right: recomputed log probs equal the rollout's (ratio 1 on-policy);
gradient accumulation over micro-batches equals one big batch; the sign (a positive advantage raises a
trajectory's likelihood); the injected reflection (mask 0) carries no gradient; the KL to an identical
reference is zero. Plus the checkpoint layout a resumed run depends on.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.dataset.rl_dataset import collate_fn
from verl_config import compose_trainer_config

from rollout.server_manager import HFServerManager
from saferl.engines import checkpoint as ckpt
from saferl.engines.actor import batched_log_probs, response_log_probs, update_policy
from saferl.engines.local import check_batch_sizes
from saferl.models.checkpoint import load_vlm

N = 2  # trajectories per prompt


@pytest.fixture(scope="module")
def cfg(tiny_model_dir: Path):
    verl = [
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.agent.default_agent_loop=safe_reflect",
        "actor_rollout_ref.rollout.prompt_length=512",
        "actor_rollout_ref.rollout.response_length=512",
        "actor_rollout_ref.rollout.calculate_log_probs=true",
        "actor_rollout_ref.rollout.temperature=1.0",
        "reward.reward_manager.name=saferl_safety",
        "actor_rollout_ref.actor.use_kl_loss=true",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.kl_loss_coef=0.01",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "data.custom_cls.path=pkg://saferl.data.dataset",
        "data.custom_cls.name=QISafeDataset",
    ]
    return compose_trainer_config(tiny_model_dir, verl, rollout=["turn_max_tokens=24"])


@pytest.fixture(scope="module")
def rollout(ray_cluster, cfg, tiny_model_dir: Path, qi_val_dataset) -> DataProto:
    """Two unsafe and two safe prompts, N trajectories each, with uids, rewards and GRPO advantages."""
    rows = [qi_val_dataset[i] for i in range(len(qi_val_dataset))]
    picked = [r for r in rows if r["safety_label"] == "unsafe"][:2] + [
        r for r in rows if r["safety_label"] == "safe"
    ][:2]
    servers = HFServerManager.start(str(tiny_model_dir), num_servers=2)
    reward = ray.remote(num_cpus=0)(RewardLoopWorker).remote(cfg)
    try:
        batch = DataProto.from_single_dict(collate_fn(picked))
        batch.non_tensor_batch["uid"] = np.array([f"p{i}" for i in range(len(batch))], dtype=object)
        batch = batch.repeat(N, interleave=True)
        raw = np.empty(len(batch), dtype=object)
        raw[:] = [copy.deepcopy(p) for p in batch.non_tensor_batch["raw_prompt"]]
        batch.non_tensor_batch["raw_prompt"] = raw
        worker = AgentLoopWorker(cfg, llm_client=servers, reward_loop_worker_handles=[reward])
        out = asyncio.run(worker.generate_sequences(batch))
    finally:
        servers.shutdown()
        ray.kill(reward)
    out.non_tensor_batch["uid"] = batch.non_tensor_batch["uid"]
    scores = out.batch["rm_scores"]
    out.batch["token_level_rewards"] = scores
    adv, _ = get_adv_estimator_fn("saferl_grpo")(
        token_level_rewards=scores,
        response_mask=out.batch["response_mask"],
        index=out.non_tensor_batch["uid"],
    )
    out.batch["advantages"] = adv
    return out


@pytest.fixture
def model(tiny_model_dir: Path):
    torch.manual_seed(0)
    return load_vlm(tiny_model_dir, dtype=torch.float32, device="cpu")[1]


def with_old_and_ref(model, batch: DataProto) -> DataProto:
    batch = copy.deepcopy(batch)
    batch.batch["old_log_probs"] = batched_log_probs(model, batch, 4, 1.0, "cpu")
    batch.batch["ref_log_prob"] = batch.batch["old_log_probs"].clone()
    return batch


def test_the_rollout_exercises_reflection_and_rewards(rollout: DataProto) -> None:
    assert rollout.batch["rm_scores"].sum(-1).abs().sum() > 0
    assert any(rollout.non_tensor_batch["reflected"])  # the untrained model's answers are unsafe
    assert (rollout.batch["response_mask"] == 0).any()


def test_recomputed_log_probs_equal_the_rollouts(rollout: DataProto, model) -> None:
    mask = rollout.batch["response_mask"].bool()
    recomputed = batched_log_probs(model, rollout, 3, 1.0, "cpu")  # micro-batches of uneven size
    diff = (recomputed - rollout.batch["rollout_log_probs"])[mask].abs()
    # float32 sums in another order (other batch, other padding): a ratio within 0.5% of 1, far
    # inside PPO's clip range, and on average two orders of magnitude closer.
    assert diff.max() < 5e-3 and diff.mean() < 5e-4, (diff.max(), diff.mean())


def test_gradient_accumulation_equals_one_big_batch(rollout: DataProto, cfg, model) -> None:
    batch = with_old_and_ref(model, rollout)
    results = []
    for micro in (len(batch), 2, 3):
        m = copy.deepcopy(model)
        m.zero_grad()
        actor_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
        opt = torch.optim.SGD(m.parameters(), lr=0.0)  # lr 0: compare the accumulated gradients
        metrics = update_policy(m, opt, batch, actor_cfg, "cpu", 1.0, len(batch), micro)
        results.append(([p.grad.clone() for p in m.parameters() if p.grad is not None], metrics))
    (reference, ref_metrics), *others = results
    for grads, metrics in others:
        for a, b in zip(reference, grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
        assert metrics["actor/pg_loss"] == pytest.approx(ref_metrics["actor/pg_loss"], abs=1e-6)


def test_a_positive_advantage_raises_likelihood(rollout: DataProto, cfg, model) -> None:
    batch = with_old_and_ref(model, rollout)
    mask = batch.batch["response_mask"].float()
    sign = torch.zeros(len(batch))
    sign[0], sign[1] = 1.0, -1.0
    batch.batch["advantages"] = sign[:, None] * mask
    actor_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    before = (batch.batch["old_log_probs"] * mask).sum(-1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    update_policy(model, opt, batch, actor_cfg, "cpu", 1.0, len(batch), len(batch))
    after = (batched_log_probs(model, batch, 4, 1.0, "cpu") * mask).sum(-1)
    assert after[0] > before[0] and after[1] < before[1]


def test_mask_zero_tokens_carry_no_gradient(rollout: DataProto, cfg, model) -> None:
    batch = with_old_and_ref(model, rollout)
    mask = batch.batch["response_mask"]
    noisy = copy.deepcopy(batch)
    noisy.batch["advantages"] = torch.where(
        mask.bool(), batch.batch["advantages"], torch.randn_like(mask.float()) * 100
    )
    grads = []
    for b in (batch, noisy):
        m = copy.deepcopy(model)
        update_policy(
            m,
            torch.optim.SGD(m.parameters(), lr=0.0),
            b,
            omega_conf_to_dataclass(cfg.actor_rollout_ref.actor),
            "cpu",
            1.0,
            len(b),
            len(b),
        )
        grads.append([p.grad.clone() for p in m.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_kl_to_an_identical_reference_is_zero(rollout: DataProto, cfg, model) -> None:
    batch = with_old_and_ref(model, rollout)
    metrics = update_policy(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        batch,
        omega_conf_to_dataclass(cfg.actor_rollout_ref.actor),
        "cpu",
        1.0,
        len(batch),
        4,
    )
    assert metrics["actor/kl_loss"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["actor/ppo_kl"] == pytest.approx(0.0, abs=1e-6)


def test_forward_without_padding_columns_is_exact(rollout: DataProto, model) -> None:
    """Trimming all-padding columns changes nothing: compare one row alone against the whole batch."""
    whole = batched_log_probs(model, rollout, len(rollout), 1.0, "cpu")
    with torch.no_grad():
        alone = response_log_probs(model.eval(), rollout[[1]], 1.0, "cpu")
    mask = rollout.batch["response_mask"][1].bool()
    torch.testing.assert_close(alone[0][mask], whole[1][mask], rtol=0, atol=2e-3)


def test_batch_size_arithmetic_is_checked(cfg) -> None:
    bad = copy.deepcopy(cfg)
    bad.saferl.local = {}
    bad.data.train_batch_size = 6
    bad.actor_rollout_ref.actor.ppo_mini_batch_size = 4
    bad.actor_rollout_ref.rollout.n = 4
    with pytest.raises(ValueError, match="train_batch_size=6"):
        check_batch_sizes(bad)
    bad.data.train_batch_size = 8
    bad.actor_rollout_ref.rollout.n = 1
    with pytest.raises(ValueError, match="groups of at least 2"):
        check_batch_sizes(bad)


def test_checkpoints_are_complete_or_ignored(tmp_path: Path, tiny_model_dir: Path) -> None:
    processor, model = load_vlm(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert ckpt.find_resume_dir(tmp_path, "auto", None) is None  # nothing yet: a fresh start
    ckpt.save_checkpoint(tmp_path, 1, model, processor, opt, {"pos": 1})
    ckpt.save_checkpoint(tmp_path, 2, model, processor, opt, {"pos": 2}, keep=1)
    assert ckpt.saved_steps(tmp_path) == [2]  # pruned to the newest
    (tmp_path / ".global_step_3.partial").mkdir()  # a save killed midway
    found = ckpt.find_resume_dir(tmp_path, "auto", None)
    assert found == tmp_path / "global_step_2"
    state = ckpt.load_trainer_state(found)
    assert (state["global_step"], state["dataloader"]) == (2, {"pos": 2})
    load_vlm(found / ckpt.MODEL_DIR)  # the policy is a loadable HF checkpoint on its own
    assert ckpt.find_resume_dir(tmp_path, "disable", None) is None
    with pytest.raises(ValueError, match="resume_from_path"):
        ckpt.find_resume_dir(tmp_path, "resume_path", None)
    (tmp_path / ckpt.TRACKER).write_text("7\n")
    with pytest.raises(FileNotFoundError, match="global_step_7"):
        ckpt.find_resume_dir(tmp_path, "auto", None)
