"""`saferl_grpo`: verl's GRPO advantage with judge failures excluded (`algorithm.adv_estimator=saferl_grpo`).

Registered into verl's estimator registry by the saferl plugin (this module imports verl, so it is
kept apart from `rewards.faults`, which verl's import of the plugin must be able to load first).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, register_adv_est

NAME = "saferl_grpo"


@register_adv_est(NAME)
def compute_grpo_excluding_failures(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's GRPO outcome advantage, with excluded samples (non-finite score) taken out of their group.

    Each excluded sample is moved to a group of its own with a zero reward, which verl's GRPO maps to a
    zero advantage; the rest is verl's own computation, unchanged.

    verl calls a registered estimator with the rewards, mask, uid index and the algorithm config only
    (ray_trainer.py `compute_advantage`, the branch for estimators other than GAE and GRPO), so
    `algorithm.norm_adv_by_std_in_grpo` is read from `config` when it is given. verl's config has no
    key for `epsilon`: it stays verl's own default, as for verl's built-in GRPO.
    """
    if config is not None and config.get("norm_adv_by_std_in_grpo") is not None:
        norm_adv_by_std_in_grpo = bool(config.get("norm_adv_by_std_in_grpo"))
    scores = token_level_rewards.sum(dim=-1)
    bad = ~torch.isfinite(scores)
    if not bad.any():
        return compute_grpo_outcome_advantage(
            token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo, config
        )
    rewards = torch.where(bad.unsqueeze(-1), torch.zeros_like(token_level_rewards), token_level_rewards)
    groups = np.array(index, dtype=object).copy()
    for i in torch.nonzero(bad).flatten().tolist():
        groups[i] = ("__excluded__", i)
    return compute_grpo_outcome_advantage(
        rewards, response_mask, groups, epsilon, norm_adv_by_std_in_grpo, config
    )
