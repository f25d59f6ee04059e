"""The judge interface: what every judge (`rule`, `openai`, `hf`) takes and returns.

A judge scores trajectories on the rubric's criteria and reports flags; it does not aggregate (that is
`rewards.rubric`) and it does not decide what a failure costs (that is `rewards.faults`). Keeping those
apart is what lets the same fault policy and the same weights apply to a rule baseline, a local VLM and
a 72B model behind an API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# Flags a judge or the injection guard may raise. Hallucination and contradiction carry the rubric's
# penalties; the others are reported.
HALLUCINATION = "hallucination"
CONTRADICTION = "contradiction"
INJECTION = "injection"
REFUSAL = "refusal"
OVER_REFUSAL = "over_refusal"
HARMFUL = "harmful"
BAD_FORMAT = "bad_format"
# PST's failure modes, when a judge can tell them (visual cue ignored; harmful premise accepted at the
# start of reasoning; safety eroding along the chain).
VAD, FRI, CSA = "vad", "fri", "csa"


@dataclass
class JudgeInput:
    """One trajectory to score. `response` is the policy's whole output (`<think>…</think>` + answer)."""

    id: str
    question: str
    response: str
    image: bytes | None = None
    safety_label: str | None = None  # "safe" | "unsafe" when known
    category: str | None = None  # a policy category id when known
    image_objects: list[dict] | None = None  # [{"name", "attributes", "text"}] when known

    @classmethod
    def from_row(cls, row: Mapping[str, Any], response: str, image: bytes | None = None) -> JudgeInput:
        """From a QI-Safe-10K-shaped row (`id`, `question`, label, category, objects); `image` overrides
        the row's own `image` (bytes) when given."""
        objects = row.get("image_objects")
        return cls(
            id=str(row.get("id") or ""),
            question=str(row.get("question") or ""),
            response=response,
            image=image if image is not None else row.get("image"),
            safety_label=row.get("safety_label"),
            category=row.get("category"),
            image_objects=list(objects) if objects is not None else None,
        )


@dataclass
class JudgeVerdict:
    """A judge's answer for one input: criteria on each criterion's own scale, and flags.

    `error` set means the judge failed for this input (after its own retries): `criteria` is then
    empty and the fault policy decides what the sample gets. A verdict never carries a made-up score.
    """

    criteria: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    error: str | None = None
    raw: str | None = None  # the judge's raw output, for debugging and W&B tables

    @property
    def failed(self) -> bool:
        return self.error is not None


class Judge(Protocol):
    """Scores a batch of trajectories. Implementations are async so API judges can overlap requests."""

    name: str  # identity recorded with every figure: kind, model and rubric version
    endpoint: str  # where it runs ("local" for in-process judges), named in failure errors

    async def judge(self, inputs: list[JudgeInput]) -> list[JudgeVerdict]: ...
