"""Fault policy: per-sample scores, the per-batch failure check, and GRPO with failures excluded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn

import rewards.grpo  # noqa: F401  (registers saferl_grpo, as the plugin does)
from rewards.faults import FaultPolicy, JudgeFailureError, check_failure_fraction


def test_policy_scores() -> None:
    assert math.isnan(FaultPolicy("exclude").failed_score())
    assert FaultPolicy("neutral", neutral_score=1.5).failed_score() == 1.5
    with pytest.raises(ValueError, match="on_failure"):
        FaultPolicy("ignore")


def test_failure_fraction_names_endpoint_and_last_error() -> None:
    policy = FaultPolicy(max_failure_fraction=0.25, min_samples=4)
    check_failure_fraction(1, 4, policy, "http://judge:8000/v1", "http 503")  # 25%: allowed
    check_failure_fraction(3, 3, policy, "http://judge:8000/v1", "http 503")  # too few samples to judge
    with pytest.raises(
        JudgeFailureError, match=r"http://judge:8000/v1.*2 of 4.*last error: timeout after 60s"
    ):
        check_failure_fraction(2, 4, policy, "http://judge:8000/v1", "timeout after 60s")


def _rewards(scores: list[float], length: int = 3) -> torch.Tensor:
    out = torch.zeros(len(scores), length)
    out[:, -1] = torch.tensor(scores)
    return out


def test_saferl_grpo_equals_verls_grpo_without_failures() -> None:
    fn = get_adv_estimator_fn("saferl_grpo")
    scores = [1.0, 3.0, 2.0, 5.0, 5.0, 0.0]
    index = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    mask = torch.ones(6, 3)
    ours, _ = fn(_rewards(scores), mask, index)
    theirs, _ = compute_grpo_outcome_advantage(_rewards(scores), mask, index)
    assert torch.equal(ours, theirs)


def test_saferl_grpo_excludes_failed_samples() -> None:
    fn = get_adv_estimator_fn("saferl_grpo")
    mask = torch.ones(4, 3)
    index = np.array(["a", "a", "a", "a"], dtype=object)
    adv, _ = fn(_rewards([1.0, float("nan"), 3.0, 2.0]), mask, index)
    assert torch.all(adv[1] == 0)  # the failed sample learns nothing
    # The others are normalised among themselves only: scores 1, 3, 2 -> mean 2, std 1.
    assert adv[[0, 2, 3], -1].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-5)
    assert torch.isfinite(adv).all()


def test_saferl_grpo_follows_the_algorithm_config_through_verls_own_call() -> None:
    """verl calls a registered estimator with the algorithm config and no `norm_adv_by_std_in_grpo`
    (ray_trainer.py `compute_advantage`): Dr. GRPO (`false`) must still mean unnormalised advantages."""
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.ray_trainer import compute_advantage

    scores = [1.0, 3.0, 2.0, 5.0, 5.0, 0.0]
    index = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    for norm in (True, False):
        data = DataProto.from_dict(
            tensors={"token_level_rewards": _rewards(scores), "response_mask": torch.ones(6, 3)},
            non_tensors={"uid": index},
        )
        config = AlgoConfig(adv_estimator="saferl_grpo", norm_adv_by_std_in_grpo=norm)
        ours = compute_advantage(
            data, adv_estimator="saferl_grpo", norm_adv_by_std_in_grpo=norm, config=config
        )
        theirs, _ = compute_grpo_outcome_advantage(
            _rewards(scores), torch.ones(6, 3), index, norm_adv_by_std_in_grpo=norm
        )
        assert torch.allclose(ours.batch["advantages"], theirs), norm
