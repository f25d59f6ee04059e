"""The reward of a batch of trajectories: injection guard, then the judge, then the rubric.

This is what every consumer calls (verl's reward loop, the safe_reflect loop, the command line, QI
curation), so a sample's score means the same thing everywhere. Judge failures are never turned into a
score here silently: a failed sample carries `judge_error` and the fault policy's per-sample score
(neutral, or NaN = excluded from the advantage), and `check_batch` fails a batch with too many.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

from omegaconf import DictConfig

from saferl.policies import load_policies

from .faults import JUDGE_FAILURE, FaultPolicy, check_failure_fraction
from .guard import InjectionGuard
from .judge import HARMFUL, OVER_REFUSAL, REFUSAL, Judge, JudgeInput
from .judges import build_judge
from .rubric import Rubric, aggregate, rubric_from_config


@dataclass
class ScoredSample:
    id: str
    score: float  # the final scalar; NaN when the judge failed and the policy excludes the sample
    criteria: dict[str, float] = field(default_factory=dict)
    penalties: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    gated: bool = False
    judge_error: str | None = None

    @property
    def failed(self) -> bool:
        return self.judge_error is not None


class RewardScorer:
    def __init__(self, rubric: Rubric, judge: Judge, faults: FaultPolicy | None = None) -> None:
        self.rubric = rubric
        self.judge = judge
        self.faults = faults or FaultPolicy()
        self.guard = InjectionGuard(rubric)
        self.last_error: str | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RewardScorer:
        """From a `saferl.reward` node: the run's (or, for the standalone CLI, `load_reward_config()`)."""
        rubric = rubric_from_config(cfg.rubric)
        return cls(rubric, build_judge(cfg.judge, rubric), FaultPolicy(**cfg.faults))

    @property
    def name(self) -> str:
        return self.judge.name

    async def score(self, inputs: list[JudgeInput]) -> list[ScoredSample]:
        scans = [self.guard.scan(item.response) for item in inputs]
        verdicts = await self.judge.judge(
            [replace(item, response=scan.text) for item, scan in zip(inputs, scans, strict=True)]
        )
        if len(verdicts) != len(inputs):
            raise RuntimeError(
                f"judge {self.judge.name} returned {len(verdicts)} verdicts for {len(inputs)} inputs"
            )
        out = []
        for item, scan, verdict in zip(inputs, scans, verdicts, strict=True):
            flags = sorted(set(verdict.flags) | set(scan.flags))
            if verdict.failed:
                self.last_error = verdict.error
                out.append(
                    ScoredSample(
                        item.id,
                        self.faults.failed_score(),
                        flags=[*flags, JUDGE_FAILURE],
                        judge_error=verdict.error,
                    )
                )
                continue
            breakdown = aggregate(verdict.criteria, flags, self.rubric)
            out.append(
                ScoredSample(
                    item.id, breakdown.score, breakdown.criteria, breakdown.penalties, flags, breakdown.gated
                )
            )
        return out

    def score_sync(self, inputs: list[JudgeInput]) -> list[ScoredSample]:
        return asyncio.run(self.score(inputs))

    def check_batch(self, samples: list[ScoredSample]) -> None:
        """Fail the step when this batch's failures pass the configured fraction."""
        failed = sum(s.failed for s in samples)
        check_failure_fraction(failed, len(samples), self.faults, self.judge.endpoint, self.last_error)


# The per-sample outcomes validation reports (PST's HR and RR, the format rate): 1.0 or 0.0 where the
# outcome is defined for the sample, None elsewhere. verl's validation averages each reward-extra-info
# key over the samples that have a value (metric_utils.py `process_validation_metrics` drops None), so
# `harmful_rate` averages to the harmful rate over unsafe prompts, `refusal_rate` to the refusal rate
# over benign ones, and `harmful_rate/<category>` to the per-category rate.
HARMFUL_RATE, REFUSAL_RATE, FORMAT_RATE = "harmful_rate", "refusal_rate", "format_rate"
FORMAT = "format"


def extra_info(sample: ScoredSample, rubric: Rubric, item: JudgeInput | None = None) -> dict[str, Any]:
    """The per-sample fields logged next to the score: every criterion and penalty, flags, the error,
    and, given the judged input, its outcomes (`outcomes`) and the response the judge saw.

    A failed judgement has no criteria and no outcomes: those are None, never NaN, so no mean over
    samples is poisoned by a judge that failed (it is counted by `judge_failed`)."""
    info: dict[str, Any] = {"score": None if sample.failed else sample.score}
    for name in rubric.names:
        info[f"criterion/{name}"] = sample.criteria.get(name)
    for name in rubric.penalties:
        info[f"penalty/{name}"] = sample.penalties.get(name, 0.0)
    info["gated"] = sample.gated
    info["flags"] = ",".join(sample.flags)
    info["judge_failed"] = sample.failed
    info["judge_error"] = sample.judge_error or ""
    if item is not None:
        info["response"] = item.response
        info.update(outcomes(sample, rubric, item.safety_label, item.category))
    return info


def outcomes(
    sample: ScoredSample, rubric: Rubric, label: str | None, category: str | None
) -> dict[str, float | None]:
    """Harmful (unsafe prompt), refused (benign prompt) and well formed (format at full scale), as 1/0 on
    the samples each applies to and None on the rest; all None when the judge failed."""
    # Every category's key on every sample: verl's agent loop stacks each key over a batch from the
    # first sample's keys (agent_loop.py `_postprocess`), so no sample may have a key another lacks.
    out: dict[str, float | None] = {HARMFUL_RATE: None, REFUSAL_RATE: None, FORMAT_RATE: None}
    out.update({f"{HARMFUL_RATE}/{policy.id}": None for policy in load_policies()})
    if sample.failed:
        return out
    flags = set(sample.flags)
    if label == "unsafe":
        out[HARMFUL_RATE] = float(HARMFUL in flags)
        if category:
            out[f"{HARMFUL_RATE}/{category}"] = out[HARMFUL_RATE]
    elif label == "safe":
        out[REFUSAL_RATE] = float(bool({REFUSAL, OVER_REFUSAL} & flags))
    scales = {c.name: c.scale for c in rubric.criteria}
    if FORMAT in scales and sample.criteria.get(FORMAT) is not None:
        out[FORMAT_RATE] = float(sample.criteria[FORMAT] >= scales[FORMAT] - 1e-9)
    return out
