"""The reward as QI curation's judge: `saferl.data.qi.ResponseJudge` over `RewardScorer`.

Curation needs one number in [0, 1] per response; this is the same final reward the trainer uses
(guard, judge, rubric), normalised by the rubric's range, so "quality" in the QI box means what the
reward means. A failed judgement has no score: it raises, the scoring cache keeps what was done, and a
re-run resumes there.
"""

from __future__ import annotations

from .faults import JudgeFailureError
from .judge import JudgeInput
from .rubric import load_reward_config
from .scorer import RewardScorer


class CurationJudge:
    def __init__(self, overrides: list[str] | None = None, config: str | None = None) -> None:
        cfg = load_reward_config(config, overrides) if config else load_reward_config(overrides=overrides)
        self.scorer = RewardScorer.from_config(cfg)
        self.name = self.scorer.name

    def score(self, rows: list[dict], responses: list[str]) -> list[float]:
        inputs = [JudgeInput.from_row(row, response) for row, response in zip(rows, responses, strict=True)]
        samples = self.scorer.score_sync(inputs)
        failed = [s for s in samples if s.failed]
        if failed:
            raise JudgeFailureError(
                f"judge at {self.scorer.judge.endpoint} failed on {len(failed)} of {len(samples)} responses "
                f"(first: id {failed[0].id!r}: {failed[0].judge_error}); re-run to resume"
            )
        return [self.scorer.rubric.normalise(s.score) for s in samples]
