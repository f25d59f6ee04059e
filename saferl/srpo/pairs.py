"""SRPO's preference pairs `D_SRPO = {(x, y_w, y_l)}`: how two answers are ranked, how pairs are mined, and
the pairs file.

PST ranks answers by three priorities, in order: safety first (an answer that violates the policy loses
to any that does not), then utility (among safe answers, the more helpful wins), then reasoning quality.
`preference_key` is that order over the project's judge verdicts, so the same judge and rubric that score
RL decide what SRPO prefers. `pick_pair` applies it to the answers of one prompt.

Sources (each optional, and counted in the manifest by category and label):
- `contrastive` (saferl/srpo/mining.py): K answers per prompt from one or more policies; the best answer
  that passes the safety gate is chosen, the worst is rejected;
- `reflection` (saferl/srpo/reflections.py): a training run's judged-safe corrections over the unsafe
  attempts they corrected, from its reflection log;
- `adversarial` (saferl/srpo/adversarial.py): the row's reference over a safety-attenuated reasoning that
  a generator model writes for a bad conclusion, kept only when the judge agrees it is worse.

The pairs file is a parquet with the prompt's image bytes, question, label and category, so DPO renders the
prompt exactly as RL does (saferl/srpo/dpo.py). `validate_pairs` names the file and row of a bad pair.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards.rubric import HELPFULNESS, POINTS, REASONING
from rewards.safety import violates_policy

CONTRASTIVE = "contrastive"
REFLECTION = "reflection"
ADVERSARIAL = "adversarial"
SOURCES = (CONTRASTIVE, REFLECTION, ADVERSARIAL)
LABELS = ("safe", "unsafe")
# Columns of the pairs file: the prompt (as the data schema has it), the pair, and where it came from.
PROMPT_COLUMNS = ("sample_id", "image", "question", "safety_label", "category", "image_objects")
PAIR_COLUMNS = (
    "pair_id",
    *PROMPT_COLUMNS,
    "chosen",
    "rejected",
    "chosen_score",
    "rejected_score",
    "chosen_flags",
    "rejected_flags",
    "source",
    "policy",
)
PAIRS_FILE = "pairs.parquet"
MANIFEST_FILE = "manifest.json"
CANDIDATES_FILE = "candidates.jsonl"  # the mining cache: one judged prompt per line


@dataclass(frozen=True)
class Candidate:
    """One judged answer to a prompt: what `preference_key` reads."""

    text: str
    score: float  # the reward's final scalar (NaN: the judge failed)
    criteria: dict[str, float]
    flags: tuple[str, ...]
    policy: str = ""

    @property
    def failed(self) -> bool:
        return not math.isfinite(self.score)

    @classmethod
    def from_judgement(cls, text: str, judgement: Mapping[str, Any], policy: str = "") -> Candidate:
        """From a stored verdict (`judgement_record`'s keys, as the caches and the reflection log hold
        them); a failed judgement, or none, gives a NaN score, which every ranking leaves out."""
        score = judgement.get("score")
        failed = judgement.get("judge_error") or score is None or not math.isfinite(float(score))
        return cls(
            text,
            float("nan") if failed else float(score),
            dict(judgement.get("criteria") or {}),
            tuple(judgement.get("flags") or ()),
            policy,
        )


def judgement_record(scored: Any) -> dict[str, Any]:
    """A `rewards.scorer.ScoredSample` as the caches store it (what `Candidate.from_judgement` reads)."""
    score = float(scored.score)
    return {
        "score": score if math.isfinite(score) else None,
        "criteria": dict(scored.criteria),
        "flags": list(scored.flags),
        "judge_error": scored.judge_error,
    }


def passes_safety_gate(candidate: Candidate, threshold: float, safety_scale: float = POINTS) -> bool:
    """Not in violation of the policy: not flagged harmful, and safety at or above the threshold (0..10)
    unless the low safety is an over-refusal, which is a utility failure, not a violation (as the
    rollout's `safety_of` decides when to reflect: one rule, `rewards.safety.violates_policy`)."""
    return not violates_policy(candidate.flags, candidate.criteria, threshold, safety_scale)


def preference_key(candidate: Candidate, threshold: float) -> tuple[bool, float, float, float]:
    """PST's order as a sort key, larger is better: safety gate, then helpfulness, then reasoning
    quality, then the reward's scalar (which also prices format, grounding and the penalties)."""
    return (
        passes_safety_gate(candidate, threshold),
        float(candidate.criteria.get(HELPFULNESS, 0.0)),
        float(candidate.criteria.get(REASONING, 0.0)),
        float(candidate.score),
    )


def pick_pair(candidates: Sequence[Candidate], threshold: float) -> tuple[Candidate, Candidate] | str:
    """(chosen, rejected) among one prompt's answers, or why there is none: `no_safe_answer` (nothing to
    prefer), `tie` (no answer ranks below the best), `too_few` (under two answers the judge scored)."""
    judged = [c for c in candidates if not c.failed]
    if len(judged) < 2:
        return "too_few"
    ranked = sorted(judged, key=lambda c: preference_key(c, threshold), reverse=True)
    best, worst = ranked[0], ranked[-1]
    if not passes_safety_gate(best, threshold):
        return "no_safe_answer"
    if preference_key(worst, threshold) == preference_key(best, threshold) or worst.text == best.text:
        return "tie"
    return best, worst


def pair_id(sample_id: str, chosen: str, rejected: str) -> str:
    """Content address of a pair: the same prompt and answers from any source are one pair."""
    payload = json.dumps([str(sample_id), chosen, rejected], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def pair_row(prompt: dict[str, Any], chosen: Candidate, rejected: Candidate, source: str) -> dict[str, Any]:
    """A row of the pairs file: the prompt's columns, the two answers and their verdicts."""
    return {
        "pair_id": pair_id(prompt["sample_id"], chosen.text, rejected.text),
        **{k: prompt.get(k) for k in PROMPT_COLUMNS},
        "chosen": chosen.text,
        "rejected": rejected.text,
        "chosen_score": float(chosen.score),
        "rejected_score": float(rejected.score),
        "chosen_flags": list(chosen.flags),
        "rejected_flags": list(rejected.flags),
        "source": source,
        "policy": chosen.policy if chosen.policy == rejected.policy else f"{chosen.policy}|{rejected.policy}",
    }


def dedupe(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in order, each pair id once (the first kept)."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row["pair_id"] not in seen:
            seen.add(row["pair_id"])
            out.append(row)
    return out


def manifest(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pairs per source, per category and per label."""
    return {
        "pairs": len(rows),
        "by_source": dict(Counter(r["source"] for r in rows)),
        "by_category": dict(sorted(Counter(str(r["category"]) for r in rows).items())),
        "by_label": dict(Counter(str(r["safety_label"]) for r in rows)),
    }


# ---------------------------------------------------------------------------------------------------
# The pairs file
# ---------------------------------------------------------------------------------------------------


class PairsError(ValueError):
    """A pairs file that DPO must not train on; the message names the file and the row."""


def write_pairs(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write the pairs (deduplicated by id) as parquet, atomically, and check what was written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = dedupe(rows)
    schema = pa.schema(
        [
            ("pair_id", pa.string()),
            ("sample_id", pa.string()),
            ("image", pa.binary()),
            ("question", pa.string()),
            ("safety_label", pa.string()),
            ("category", pa.string()),
            ("image_objects", pa.string()),  # JSON, as the verl-format rows carry it
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("chosen_score", pa.float64()),
            ("rejected_score", pa.float64()),
            ("chosen_flags", pa.list_(pa.string())),
            ("rejected_flags", pa.list_(pa.string())),
            ("source", pa.string()),
            ("policy", pa.string()),
        ]
    )
    table = pa.Table.from_pylist(
        [{**r, "image_objects": _as_json(r.get("image_objects"))} for r in rows], schema=schema
    )
    staging = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, staging, compression="zstd")
    staging.replace(path)
    validate_pairs(path)
    return path


def _as_json(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a pairs file, after `validate_pairs`."""
    import pyarrow.parquet as pq

    validate_pairs(path)
    return pq.read_table(path).to_pylist()


def validate_pairs(path: str | Path) -> int:
    """Check every row of a pairs file; return the row count. Raises `PairsError` naming the file (not a
    parquet, missing columns) or the row and field (empty or identical answers, an unknown label, an
    image that does not decode, a duplicated pair)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise PairsError(f"{path}: not a readable parquet file ({err})") from err
    missing = [c for c in PAIR_COLUMNS if c not in table.column_names]
    if missing:
        raise PairsError(f"{path}: missing columns {', '.join(missing)}")
    seen: dict[str, int] = {}
    for index, row in enumerate(table.to_pylist()):
        where = f"{path} row {index} (pair {row.get('pair_id')!r})"
        for field in ("chosen", "rejected"):
            if not isinstance(row[field], str) or not row[field].strip():
                raise PairsError(f"{where}: {field} is empty")
        if row["chosen"] == row["rejected"]:
            raise PairsError(f"{where}: chosen and rejected are the same answer")
        if row["safety_label"] not in LABELS:
            raise PairsError(f"{where}: safety_label {row['safety_label']!r} is not one of {LABELS}")
        if row["source"] not in SOURCES:
            raise PairsError(f"{where}: source {row['source']!r} is not one of {SOURCES}")
        if not isinstance(row["image"], bytes | bytearray) or not row["image"]:
            raise PairsError(f"{where}: image is not encoded image bytes")
        try:
            Image.open(io.BytesIO(row["image"])).verify()
        except Exception as err:  # PIL raises many types for bad bytes
            raise PairsError(f"{where}: image does not decode ({err})") from err
        if row["pair_id"] in seen:
            raise PairsError(f"{where}: duplicate of row {seen[row['pair_id']]}")
        seen[row["pair_id"]] = index
    return table.num_rows
