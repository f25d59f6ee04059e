"""SRPO's `reflection` source: from a training run's reflection log (rollout/reflection_log.py), each
unsafe first attempt that the reflect-and-correct loop turned into a judged-safe correction gives the pair
(prompt, correction ≻ attempt): the pair PST's SRPO wants, which the rollout produces as it trains."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from .pairs import REFLECTION, Candidate, pair_row, passes_safety_gate


def reflection_pairs(
    prompts: dict[str, dict[str, Any]], records: Iterable[dict[str, Any]], threshold: float, policy: str = ""
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Pairs from reflection records, and the records that gave none, by reason: `correction_<verdict>`
    (the correction's verdict was not `safe`: `unsafe`, `no_answer`, ...), `not_corrected` (the attempt
    was not unsafe, or the correction fails the gate at the pairs' threshold), `judge_failed`,
    `unknown_prompt` (its sample id is not in the data the pairs are built for)."""
    rows, skipped = [], Counter()
    for record in records:
        if record.get("verdict_before") != "unsafe":
            skipped["not_corrected"] += 1
            continue
        if record.get("verdict_after") != "safe":
            skipped[f"correction_{record.get('verdict_after')}"] += 1
            continue
        prompt = prompts.get(str(record.get("sample_id")))
        if prompt is None:
            skipped["unknown_prompt"] += 1
            continue
        step = record.get("global_step")
        source = f"{policy}@step{step}" if step is not None else policy
        correction = Candidate.from_judgement(
            record["correction"], record.get("correction_judgement") or {}, source
        )
        attempt = Candidate.from_judgement(record["attempt"], record.get("attempt_judgement") or {}, source)
        if correction.failed or attempt.failed:
            skipped["judge_failed"] += 1
            continue
        if not passes_safety_gate(correction, threshold) or correction.text == attempt.text:
            skipped["not_corrected"] += 1
            continue
        rows.append(pair_row(prompt, correction, attempt, source=REFLECTION))
    return rows, skipped
