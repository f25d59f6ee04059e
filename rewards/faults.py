"""What a judge failure costs: the fault policy, the per-batch failure check, and exclusion from GRPO.

A judge can fail for one sample (unparseable output, out-of-range scores after retries, a timeout) or
for all of them (the server is down). Neither may crash a training step silently or hand out a made-up
score. Per sample, the configured policy applies:

- `neutral`: the sample gets `neutral_score` (and is flagged `judge_failure`);
- `exclude`: the sample's score is NaN, and the `saferl_grpo` advantage estimator (`rewards.grpo`,
  selected by `algorithm.adv_estimator=saferl_grpo`) gives it zero advantage and leaves it out of its
  group's mean and std, so it neither learns nor shifts its siblings.

Per batch, more failures than `max_failure_fraction` fail the step with an error naming the endpoint
and the last error: a judge that is down must stop training, not train on neutral values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

JUDGE_FAILURE = "judge_failure"
POLICIES = ("exclude", "neutral")


class JudgeFailureError(RuntimeError):
    """Too many judge failures in one batch; the message names the endpoint and the last error."""


@dataclass(frozen=True)
class FaultPolicy:
    on_failure: str = "exclude"
    neutral_score: float = 0.0
    max_failure_fraction: float = 0.2
    min_samples: int = 8
    window: int = 256  # verl's reward loop sees one sample at a time: check over this many recent ones

    def __post_init__(self) -> None:
        if self.on_failure not in POLICIES:
            raise ValueError(f"faults.on_failure must be one of {POLICIES}, got {self.on_failure!r}")
        if not 0 <= self.max_failure_fraction <= 1:
            raise ValueError(
                f"faults.max_failure_fraction must be in [0, 1], got {self.max_failure_fraction}"
            )

    def failed_score(self) -> float:
        """The per-sample score of a failed judgement under this policy (NaN = excluded)."""
        return self.neutral_score if self.on_failure == "neutral" else math.nan


def check_failure_fraction(
    n_failed: int, n_total: int, policy: FaultPolicy, endpoint: str, last_error: str | None
) -> None:
    """Raise `JudgeFailureError` when the failures of one batch exceed the policy's fraction."""
    if n_total >= policy.min_samples and n_total and n_failed / n_total > policy.max_failure_fraction:
        raise JudgeFailureError(
            f"judge at {endpoint} failed on {n_failed} of {n_total} samples "
            f"(> {policy.max_failure_fraction:.0%} allowed by saferl.reward.faults.max_failure_fraction); "
            f"last error: {last_error}"
        )


def excluded(scores: Sequence[float]) -> np.ndarray:
    """Mask of samples excluded from the advantage (their score is not finite)."""
    return ~np.isfinite(np.asarray(scores, dtype=np.float64))
