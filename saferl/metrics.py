"""Training and validation metrics from per-sample rollout columns, and the trajectory table for W&B.

Every function takes `columns`: a mapping of column name -> one value per sample. That is exactly a verl
`DataProto.non_tensor_batch` (numpy arrays, object or not) and also a plain dict of lists, so the same
numbers come out of verl's trainer (saferl.replay_buffer), evaluation and the tests.

Where the columns come from:
- the agent loop `safe_reflect` (rollout/reflect_loop.py): `reflected`, `verdict_before`, `verdict_after`,
  `reflection_rounds`, `reflection_skipped`, `final_response`, `correction`, ... Absent (or None) under
  verl's plain `single_turn_agent`, which the validation path may use;
- the dataset row: `safety_label`, `question`, `category`, `sample_id`;
- the reward manager (`rewards.scorer.extra_info`): `score`, `criterion/<name>`, `penalty/<name>`,
  `gated`, `flags` (comma-joined), `judge_failed`, `judge_error`.

Undefined values are left out, never invented. A rate whose denominator is empty (no reflected
trajectory, no judged unsafe prompt, ...) is not reported at all: a 0.0 would read as "perfect" on a
dashboard and a NaN breaks W&B's charts and summaries, while a missing point is honest. Counts
(`judge_failures`, `n_safe`, `n_unsafe`) are always defined and reported, zero included. Samples whose
judge failed carry no information about the policy: they are left out of every rate and mean and only
counted in `judge_failures`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rewards.judge import CONTRADICTION, HALLUCINATION, HARMFUL, OVER_REFUSAL, REFUSAL
from rewards.rubric import FORMAT, HELPFULNESS, SAFETY

Columns = Mapping[str, "Sequence[Any] | np.ndarray"]

# The criteria of conf/saferl/reward/default.yaml; callers with another rubric pass `rubric.names`.
DEFAULT_CRITERIA: tuple[str, ...] = (
    "safety_awareness",
    "helpfulness",
    "reasoning_coherence",
    "visual_grounding",
    "format",
)
# The columns of the trajectory table, in order (`table_rows` gives all but `image`).
TABLE_COLUMNS: tuple[str, ...] = (
    "image",
    "sample_id",
    "safety_label",
    "category",
    "question",
    "response",
    "reflection",
    "correction",
    "criteria",
    "flags",
    "score",
)


# ---------------------------------------------------------------------------------------------------
# Column helpers
# ---------------------------------------------------------------------------------------------------


def batch_size(columns: Columns) -> int:
    """The number of samples; every column must have one value per sample (a ragged batch is a bug
    upstream, and silently truncating would misalign labels and flags)."""
    sizes = {name: len(values) for name, values in columns.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"columns of different lengths: {sizes}")
    return next(iter(sizes.values()), 0)


def _scalar(value: Any) -> Any:
    """A numpy scalar as the Python value (verl stacks reward infos with plain `np.array`)."""
    return value.item() if isinstance(value, np.generic) else value


def _column(columns: Columns, name: str) -> list[Any] | None:
    """The column as a list of Python values, or None when absent."""
    if name not in columns:
        return None
    return [_scalar(v) for v in columns[name]]


def _value(columns: Columns, name: str, i: int) -> Any:
    """Sample i's value of a column, None when the column is absent."""
    return _scalar(columns[name][i]) if name in columns else None


def to_float(value: Any) -> float:
    """A number, NaN for None or anything that is not one."""
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def parse_flags(value: Any) -> frozenset[str]:
    """The flags of one sample: the reward writes them comma-joined; a list is accepted too."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        parts: Sequence[Any] = value.split(",")
    elif isinstance(value, Sequence | np.ndarray):
        parts = list(value)
    else:
        return frozenset()
    return frozenset(p for p in (str(p).strip() for p in parts) if p)


def judge_failed(columns: Columns) -> list[bool] | None:
    """Per sample, whether the judge failed; None when the batch carries no reward at all.

    `judge_failed` is authoritative; without it a non-empty `judge_error`, else a NaN `score` (the
    `exclude` fault policy's mark), tells.
    """
    failed = _column(columns, "judge_failed")
    if failed is not None:
        return [bool(f) for f in failed]
    errors = _column(columns, "judge_error")
    if errors is not None:
        return [bool(e) for e in errors]
    scores = _column(columns, "score")
    if scores is not None:
        return [math.isnan(to_float(s)) for s in scores]
    return None


def mean(values: Iterable[float]) -> float | None:
    """The mean of the finite values, None when there are none (left out by the caller)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def rate(hits: Sequence[bool]) -> float | None:
    """The share of True, None for an empty denominator."""
    return sum(hits) / len(hits) if hits else None


def put(out: dict[str, float], name: str, value: float | None) -> None:
    """Record a metric unless it is undefined."""
    if value is not None:
        out[name] = float(value)


def _judged(columns: Columns, n: int) -> tuple[list[bool] | None, list[int]]:
    """The failure mask and the indices of the samples the judge did not fail on."""
    failed = judge_failed(columns)
    return failed, [i for i in range(n) if failed is None or not failed[i]]


def _criterion_mean(columns: Columns, name: str, judged: Sequence[int]) -> float | None:
    values = _column(columns, f"criterion/{name}")
    return None if values is None else mean([to_float(values[i]) for i in judged])


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------


def rollout_metrics(columns: Columns, criteria: Sequence[str] = DEFAULT_CRITERIA) -> dict[str, float]:
    """Per training step: how often the policy needed a reflection, how often the reflection fixed it,
    and the reward's components.

    - `rollout/reflect_rate`: reflected trajectories / trajectories the reflect loop ran on;
    - `rollout/correction_success_rate`: among reflected ones, the share whose `verdict_after` is
      "safe" (left out when none reflected: a batch without reflections says nothing about them);
    - `rollout/reflection_skipped_rate`: trajectories whose reflection was skipped (no response budget
      left) / trajectories the reflect loop ran on;
    - `reward/<criterion>/mean`, `reward/score/mean`: means over judged samples;
    - `reward/hallucination_rate`, `reward/contradiction_rate`, `reward/gated_rate`: shares of judged
      samples flagged (gated);
    - `reward/judge_failures`: the COUNT of samples whose judge failed (how much of the batch the
      rates above do not see).

    The rollout entries are absent when the agent-loop fields are (a plain `single_turn_agent`).
    """
    n = batch_size(columns)
    out: dict[str, float] = {}

    reflected = _column(columns, "reflected") or [None] * n
    ran = [i for i in range(n) if reflected[i] is not None]  # the reflect loop's trajectories
    if ran:
        did = [i for i in ran if bool(reflected[i])]
        put(out, "rollout/reflect_rate", len(did) / len(ran))
        after = _column(columns, "verdict_after")
        if after is not None:
            put(out, "rollout/correction_success_rate", rate([after[i] == "safe" for i in did]))
        skipped = _column(columns, "reflection_skipped")
        if skipped is not None:
            put(out, "rollout/reflection_skipped_rate", rate([bool(skipped[i]) for i in ran]))

    failed, judged = _judged(columns, n)
    for name in criteria:
        put(out, f"reward/{name}/mean", _criterion_mean(columns, name, judged))
    scores = _column(columns, "score")
    if scores is not None:
        put(out, "reward/score/mean", mean([to_float(scores[i]) for i in judged]))
    flags = _column(columns, "flags")
    if flags is not None:
        parsed = [parse_flags(flags[i]) for i in judged]
        put(out, "reward/hallucination_rate", rate([HALLUCINATION in f for f in parsed]))
        put(out, "reward/contradiction_rate", rate([CONTRADICTION in f for f in parsed]))
    gated = _column(columns, "gated")
    if gated is not None:
        put(out, "reward/gated_rate", rate([bool(gated[i]) for i in judged]))
    if failed is not None:
        out["reward/judge_failures"] = float(sum(failed))
    return out


def validation_metrics(
    columns: Columns,
    criteria: Sequence[str] = DEFAULT_CRITERIA,
    prefix: str = "val",
    format_scale: float = 10.0,
) -> dict[str, float]:
    """On the validation set: does the policy avoid harm on unsafe prompts without refusing safe ones.

    - `<prefix>/harmful_rate`: judged prompts labelled "unsafe" whose flags contain `harmful`, over
      judged unsafe prompts; and the same per category as `<prefix>/harmful_rate/<category>`;
    - `<prefix>/refusal_rate`: judged prompts labelled "safe" flagged `refusal` or `over_refusal`, over
      judged safe prompts;
    - `<prefix>/safety_score`, `<prefix>/helpfulness_score`: means of those criteria;
    - `<prefix>/format_rate`: share with the format criterion at full scale (`format_scale`, the
      criterion's own scale in the rubric);
    - `<prefix>/score/mean` and `<prefix>/<criterion>/mean` for each of `criteria`;
    - `<prefix>/n_unsafe`, `<prefix>/n_safe`: prompts of each label in the batch, judged or not (the
      set's composition, the same at every validation); `<prefix>/judge_failures`: the count left out.

    A rate with no prompt to compute it on (no unsafe prompt, no safe one, no category) is left out.
    """
    n = batch_size(columns)
    out: dict[str, float] = {}
    failed, judged = _judged(columns, n)
    labels = _column(columns, "safety_label") or [None] * n
    flags = _column(columns, "flags")
    parsed = [parse_flags(f) for f in flags] if flags is not None else None

    if parsed is not None:
        unsafe = [i for i in judged if labels[i] == "unsafe"]
        safe = [i for i in judged if labels[i] == "safe"]
        put(out, f"{prefix}/harmful_rate", rate([HARMFUL in parsed[i] for i in unsafe]))
        put(out, f"{prefix}/refusal_rate", rate([bool({REFUSAL, OVER_REFUSAL} & parsed[i]) for i in safe]))
        categories = _column(columns, "category")
        if categories is not None:
            by_category: dict[str, list[bool]] = {}
            for i in unsafe:
                if categories[i]:
                    by_category.setdefault(str(categories[i]), []).append(HARMFUL in parsed[i])
            for category, hits in sorted(by_category.items()):
                put(out, f"{prefix}/harmful_rate/{category}", rate(hits))

    put(out, f"{prefix}/safety_score", _criterion_mean(columns, SAFETY, judged))
    put(out, f"{prefix}/helpfulness_score", _criterion_mean(columns, HELPFULNESS, judged))
    formats = _column(columns, f"criterion/{FORMAT}")
    if formats is not None:
        values = [v for v in (to_float(formats[i]) for i in judged) if not math.isnan(v)]
        put(out, f"{prefix}/format_rate", rate([v >= format_scale - 1e-9 for v in values]))
    scores = _column(columns, "score")
    if scores is not None:
        put(out, f"{prefix}/score/mean", mean([to_float(scores[i]) for i in judged]))
    for name in criteria:
        put(out, f"{prefix}/{name}/mean", _criterion_mean(columns, name, judged))

    if "safety_label" in columns:
        out[f"{prefix}/n_unsafe"] = float(sum(label == "unsafe" for label in labels))
        out[f"{prefix}/n_safe"] = float(sum(label == "safe" for label in labels))
    if failed is not None:
        out[f"{prefix}/judge_failures"] = float(sum(failed))
    return out


# ---------------------------------------------------------------------------------------------------
# Trajectory table
# ---------------------------------------------------------------------------------------------------


def select_rows(columns: Columns, max_rows: int = 16) -> list[int]:
    """Which samples go in the table: deterministic, and covering every (label, reflected) stratum
    present, so a few rows show a reflected unsafe trajectory next to a plain safe one instead of 16
    copies of the majority case. Round-robin over strata (ordered by first appearance), each in
    original order; the chosen indices are returned in original order (GRPO groups stay together)."""
    n = batch_size(columns)
    labels = _column(columns, "safety_label") or [None] * n
    reflected = _column(columns, "reflected") or [None] * n
    strata: dict[tuple[Any, Any], list[int]] = {}
    for i in range(n):
        key = (labels[i], None if reflected[i] is None else bool(reflected[i]))
        strata.setdefault(key, []).append(i)
    queues = list(strata.values())
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(max_rows, n):
        for queue in queues:
            if depth < len(queue) and len(chosen) < max_rows:
                chosen.append(queue[depth])
        depth += 1
    return sorted(chosen)


def _json_float(value: Any) -> float | None:
    """A float for JSON: NaN (a failed judge) becomes null, which every JSON reader accepts."""
    number = to_float(value)
    return None if math.isnan(number) else number


def _texts(columns: Columns, i: int) -> tuple[str, str, str]:
    """The policy's first response, the injected reflection, and the correction of sample i.

    `final_response` is the text the reward judged. With `mode: replace` that is the correction when
    reflected (the first attempt is then only in the decoded transcript); with `mode: extra` the batch
    row is the first attempt, so `final_response` is too, and `correction` holds the corrected
    trajectory (tokens, plus `text` when the engine decoded it). Explicit columns win when present:
    `first_response` (the first attempt), `response` (the decoded response, e.g. under
    `single_turn_agent`), `reflection_text`, `correction_text`.
    """
    reflected = bool(_value(columns, "reflected", i))
    final = _value(columns, "final_response", i)
    correction = _value(columns, "correction", i)
    first, decoded = _value(columns, "first_response", i), _value(columns, "response", i)
    corrected = _value(columns, "correction_text", i)
    if reflected and isinstance(correction, Mapping):  # mode "extra"
        response = first or final or decoded
        corrected = corrected or correction.get("text") or correction.get("response_text")
    elif reflected:  # mode "replace"
        response = first or decoded
        corrected = corrected or final
    else:
        response = first or final or decoded
    reflection = _value(columns, "reflection_text", i) if reflected else None
    return _text(response), _text(reflection), _text(corrected)


def _rows(columns: Columns, indices: Sequence[int], criteria: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for i in indices:
        response, reflection, correction = _texts(columns, i)
        scores = {
            name: _json_float(_value(columns, f"criterion/{name}", i))
            for name in criteria
            if f"criterion/{name}" in columns
        }
        flags = _value(columns, "flags", i)
        rows.append(
            {
                "sample_id": _text(_value(columns, "sample_id", i)),
                "safety_label": _text(_value(columns, "safety_label", i)),
                "category": _text(_value(columns, "category", i)),
                "question": _text(_value(columns, "question", i)),
                "response": response,
                "reflection": reflection,
                "correction": correction,
                "criteria": json.dumps(scores, separators=(",", ":")),
                "flags": ",".join(sorted(parse_flags(flags))),
                "score": _json_float(_value(columns, "score", i)),
            }
        )
    return rows


def table_rows(
    columns: Columns, max_rows: int = 16, criteria: Sequence[str] = DEFAULT_CRITERIA
) -> list[dict[str, Any]]:
    """The table's rows as plain data (every column but `image`), for a jsonl file beside the metrics,
    so runs without W&B show the same samples. Only per-sample data goes in, never configuration (no
    endpoints, keys or paths), and NaN becomes null so the file is strict JSON."""
    return _rows(columns, select_rows(columns, max_rows), criteria)


# Run-dir folders the replay buffer writes one jsonl to per validation step: the table's sample rows, and
# every trajectory (`trajectory_records`, what `saferl.learning` reads). `saferl.resume` trims both.
VAL_SAMPLES, VALIDATIONS = "val_samples", "validations"


def trajectory_records(columns: Columns, criteria: Sequence[str] = DEFAULT_CRITERIA) -> list[dict[str, Any]]:
    """Every trajectory of the batch as a `table_rows` row: what a validation's learning figures are
    computed from (`saferl.learning`), per row rather than as verl's means."""
    return _rows(columns, range(batch_size(columns)), criteria)


def _wandb_image(data: bytes | None) -> Any:
    """A `wandb.Image` from encoded bytes; None when missing or undecodable (a bad image must not
    stop the logging of a training step)."""
    if not data:
        return None
    import wandb
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            image.load()
            return wandb.Image(image.copy())
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def trajectory_table(
    columns: Columns,
    images: Sequence[bytes | None] | None = None,
    max_rows: int = 16,
    criteria: Sequence[str] = DEFAULT_CRITERIA,
) -> Any:
    """A `wandb.Table` (columns `TABLE_COLUMNS`) of a few trajectories chosen by `select_rows`, with
    the image; `images` holds one entry (PNG/JPEG bytes or None) per sample of `columns`. Building it
    needs no W&B run (it is logged with `run.log`)."""
    import wandb

    n = batch_size(columns)
    if images is not None and len(images) != n:
        raise ValueError(f"{len(images)} images for {n} samples")
    table = wandb.Table(columns=list(TABLE_COLUMNS))
    indices = select_rows(columns, max_rows)
    for i, row in zip(indices, _rows(columns, indices, criteria), strict=True):
        image = _wandb_image(images[i]) if images is not None else None
        table.add_data(image, *(row[name] for name in TABLE_COLUMNS[1:]))
    return table
