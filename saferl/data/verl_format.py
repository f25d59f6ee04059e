"""Convert QI-Safe-10K rows to verl's RL parquet format.

verl's `RLHFDataset` reads `prompt` (chat messages whose text holds an `<image>` placeholder), `images`
(`[{"bytes": ...}]`), `data_source`, `reward_model.ground_truth` and `extra_info`. The reward manager
and the reflect-and-correct loop need the sample's label, category and image annotations, so those
travel in `extra_info` (verl hands it to the reward function) and the dataset class lifts them to the
top level of each row (where the agent loop receives them as keyword arguments).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .validate import DataError, read_rows, validate

logger = logging.getLogger(__name__)

DATA_SOURCE = "qi_safe_10k"
ABILITY = "safety"
# The format instruction after the question: reasoning models answer `<think>…</think>` then the answer.
DEFAULT_PROMPT_TEMPLATE = (
    "<image>{question}\n"
    "First reason about the image and the request inside <think> </think>, then give your answer."
)
# verl's agent-loop worker runs the loop a row names in this column (else the configured default).
AGENT_NAME = "agent_name"
VAL_SPLIT = "val"
EXTRA_FIELDS = ("id", "question", "safety_label", "category", "source", "split", "reference")


def to_verl_row(row: dict, index: int, prompt_template: str = DEFAULT_PROMPT_TEMPLATE) -> dict:
    if prompt_template.count("<image>") != 1:
        raise ValueError("prompt_template must contain exactly one <image> placeholder")
    extra = {name: row.get(name) for name in EXTRA_FIELDS}
    # Serialised: verl's collation and Ray's object store handle a JSON string better than nested lists
    # of structs, and an absent annotation stays distinguishable (null) from an empty one ("[]").
    objects = row.get("image_objects")
    extra["image_objects"] = None if objects is None else json.dumps(objects, ensure_ascii=False)
    extra["index"] = index
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": prompt_template.format(question=row["question"])}],
        "images": [{"bytes": row["image"]}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": row["safety_label"]},
        "extra_info": extra,
    }


def convert_rows(rows: Iterable[dict], prompt_template: str = DEFAULT_PROMPT_TEMPLATE) -> list[dict]:
    return [to_verl_row(row, i, prompt_template) for i, row in enumerate(rows)]


def validated_rows(src: str | Path, rejects_dir: str | Path | None = None) -> list[dict]:
    """The rows of `src` once the validator passes them: what is converted is what was checked.

    Any bad row or unreadable file raises `DataError` with the validator's report. With `rejects_dir`
    (the user asked to drop bad rows: `saferl.data.drop_bad_rows`, `to-verl --drop-bad-rows`) the good
    rows are returned and the bad ones written there with all their columns and reasons
    (`<file>.rejects.parquet`, `<file>.rejects.jsonl`): dropped, never lost. An unreadable file is refused
    either way, since none of its rows could be kept."""
    report = validate(src, write_clean=rejects_dir)
    if report.file_problems or (report.problems and rejects_dir is None):
        raise DataError(
            "\n".join(
                [
                    f"{src}: {report.summary()}",
                    *report.lines(limit=20),
                    "Fix these rows (python -m saferl.data validate SRC --write-clean OUT writes the good rows "
                    "and the rejects with their reasons), or train on the good rows only: "
                    "saferl.data.drop_bad_rows=true (python -m saferl.data to-verl --drop-bad-rows).",
                ]
            )
        )
    if rejects_dir is None:
        return read_rows(src)
    rows = []
    for file in report.files:
        clean = Path(rejects_dir) / f"{Path(file).stem}.parquet"
        rows += read_rows(clean)
        clean.unlink()  # converted below; the rejects stay
    if report.problems:
        logger.warning(
            "%s: dropped %d bad rows of %d (saferl.data.drop_bad_rows); they are in %s with their reasons",
            src,
            len(report.problems),
            report.rows,
            rejects_dir,
        )
    return rows


def convert_file(
    src: str | Path, dst: str | Path, split: str | None = None, prompt_template: str = DEFAULT_PROMPT_TEMPLATE
) -> int:
    """Convert one QI-Safe-10K parquet (optionally one split of it) to verl format, after the validator
    (`validated_rows`); return the row count."""
    rows = validated_rows(src)
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    converted = convert_rows(rows, prompt_template)
    if not converted:
        raise ValueError(f"{src}: no rows{f' in split {split!r}' if split else ''} to convert")
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(converted), dst)
    return len(converted)


def convert_dataset(
    src: str | Path,
    out_dir: str | Path,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    val_agent_loop: str | None = None,
    rejects_dir: str | Path | None = None,
) -> dict:
    """Every split found in `src` (a parquet file or a directory of them) to `out_dir/<split>.parquet`,
    after the validator (`validated_rows`: refused on a bad row, or with `rejects_dir` the bad rows go
    there).

    `val_agent_loop` names the agent loop of every val row (verl's per-row `agent_name` column): the
    training default is the reflect-and-correct loop, but validation scores the policy's own answer."""
    rows = validated_rows(src, rejects_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in sorted({r["split"] for r in rows}):
        part = convert_rows([r for r in rows if r["split"] == split], prompt_template)
        if split == VAL_SPLIT and val_agent_loop:
            part = [{**row, AGENT_NAME: val_agent_loop} for row in part]
        pq.write_table(pa.Table.from_pylist(part), out_dir / f"{split}.parquet")
        counts[split] = len(part)
    return counts
