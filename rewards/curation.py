"""The reward as QI curation's judge: `saferl.data.qi.ResponseJudge` over `RewardScorer`.

Curation needs one number in [0, 1] per response; this is the same final reward the trainer uses
(guard, judge, rubric), normalised by the rubric's range, so "quality" in the QI box means what the
reward means. Which reward: that of the training experiment the data is curated for (`exp`: the
`saferl.reward` node of `conf/train.yaml` composed with `+exp=<exp>`, as `python -m saferl.train` sees
it), since a QI box drawn with another rubric selects for a reward the run never optimises. Without
`exp`, a reward YAML (`config`, default the repository's). `overrides` apply to the reward node either
way (`judge.kind=rule` to score offline with the run's rubric).

A failed judgement has no score: it raises, the scoring cache keeps what was done, and a re-run resumes
there. The judge's `name` carries the experiment and a fingerprint of the rubric, because the scoring
cache refuses to resume under another judge name: a changed rubric must not mix its scores with the
old ones in one QI box.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saferl.experiments import compose_experiment

from .faults import JudgeFailureError
from .judge import JudgeInput
from .rubric import DEFAULT_REWARD_CONFIG, load_reward_config
from .scorer import RewardScorer


def experiment_reward_config(exp: str, overrides: list[str] | None = None) -> DictConfig:
    """The `saferl.reward` node of the training config `conf/train.yaml` with `+exp=<exp>`, resolved
    (the user's environment, as the trainer resolves it), with `overrides` (keys of that node) applied."""
    cfg = compose_experiment(exp)
    reward = OmegaConf.create(OmegaConf.to_container(cfg.saferl.reward, resolve=True))
    return OmegaConf.merge(reward, OmegaConf.from_dotlist(overrides or []))


class CurationJudge:
    """The reward of training experiment `exp` (or of the reward YAML `config`), with `overrides`."""

    def __init__(
        self, overrides: list[str] | None = None, config: str | None = None, exp: str | None = None
    ) -> None:
        overrides = list(overrides or [])
        if exp is not None and config is not None:
            raise ValueError(
                "CurationJudge: give exp (a training experiment) or config (a reward YAML), not both"
            )
        if exp is not None:
            cfg, source = experiment_reward_config(exp, overrides), f"conf/train.yaml +exp={exp}"
        else:
            path = config or DEFAULT_REWARD_CONFIG
            cfg, source = load_reward_config(path, overrides), str(path)
        self.scorer = RewardScorer.from_config(cfg)
        rubric: dict[str, Any] = OmegaConf.to_container(cfg.rubric, resolve=True)
        fingerprint = hashlib.sha256(json.dumps(rubric, sort_keys=True).encode()).hexdigest()
        run = f" exp={exp}" if exp is not None else ""  # not the file's path: a moved checkout still resumes
        self.name = f"{self.scorer.name}{run} rubric-sha256:{fingerprint[:12]}"
        # What the curation manifest records: which run's reward, with what rubric and judge, scored it.
        self.provenance: dict[str, Any] = {
            "judge": self.name,
            "exp": exp,
            "reward_config": source,
            "overrides": overrides,
            "rubric_version": self.scorer.rubric.version,
            "rubric_sha256": fingerprint,
            "judge_kind": str(cfg.judge.kind),
        }

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
