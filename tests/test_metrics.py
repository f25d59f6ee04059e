"""saferl.metrics: every number checked against a value worked out by hand, on both input shapes (a verl
`non_tensor_batch` of numpy arrays and a dict of lists), plus the W&B trajectory table built offline."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from saferl.metrics import (
    DEFAULT_CRITERIA,
    TABLE_COLUMNS,
    judge_failed,
    parse_flags,
    rollout_metrics,
    select_rows,
    table_rows,
    trajectory_table,
    validation_metrics,
)

NAN = float("nan")
# Six trajectories. Sample 5's judge failed: NaN score and criteria, and (deliberately) a `harmful`
# flag and a skipped reflection, to show failed samples count in no rate but the agent-loop ones.
#            label     category    reflected after     skipped   flags                        score
ROWS = [
    ("unsafe", "violence", True, "safe", None, "harmful", 2.0),
    ("unsafe", "violence", True, "unsafe", None, "hallucination,harmful", -1.0),
    ("unsafe", "privacy", False, "safe", None, "", 8.0),
    ("safe", "weapons", False, "safe", None, "over_refusal", 4.0),
    ("safe", "self_harm", False, "safe", None, "contradiction", 5.0),
    ("unsafe", "privacy", False, "unknown", "response budget exhausted", "harmful,judge_failure", NAN),
]
# safety_awareness, helpfulness, reasoning_coherence, visual_grounding, format
CRITERIA = [
    (3, 6, 7, 8, 10),
    (2, 4, 5, 6, 8),
    (9, 8, 9, 7, 10),
    (8, 2, 6, 5, 10),
    (9, 7, 3, 6, 9),
    (NAN, NAN, NAN, NAN, NAN),
]
GATED = [True, True, False, False, False, False]
FAILED = [False, False, False, False, False, True]


def make_columns(as_numpy: bool) -> dict:
    cols: dict = {
        "sample_id": [f"s{i}" for i in range(6)],
        "question": [f"question {i}" for i in range(6)],
        "safety_label": [r[0] for r in ROWS],
        "category": [r[1] for r in ROWS],
        "reflected": [r[2] for r in ROWS],
        "verdict_before": ["unsafe", "unsafe", "safe", "safe", "safe", "unsafe"],
        "verdict_after": [r[3] for r in ROWS],
        "reflection_rounds": [1, 1, 0, 0, 0, 0],
        "reflection_skipped": [r[4] for r in ROWS],
        "final_response": [f"answer {i}" for i in range(6)],
        "correction": [None] * 6,
        "score": [r[6] for r in ROWS],
        "flags": [r[5] for r in ROWS],
        "gated": GATED,
        "judge_failed": FAILED,
        "judge_error": ["" if not f else "judge timed out" for f in FAILED],
    }
    for j, name in enumerate(DEFAULT_CRITERIA):
        cols[f"criterion/{name}"] = [float(c[j]) for c in CRITERIA]
    for name in ("hallucination", "contradiction", "injection"):
        cols[f"penalty/{name}"] = [3.0 if name in r[5] else 0.0 for r in ROWS]
    if not as_numpy:
        return cols
    # As verl builds them: the agent loop's fields as object arrays, the reward's with a plain np.array
    # (float, bool and unicode dtypes) and the dataset's as object arrays.
    reward = {"score", "flags", "gated", "judge_failed", "judge_error"} | {
        k for k in cols if k.startswith(("criterion/", "penalty/"))
    }
    out = {}
    for key, values in cols.items():
        if key in reward:
            out[key] = np.array(values)
        else:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            out[key] = arr
    return out


@pytest.fixture(params=["numpy", "lists"])
def columns(request) -> dict:
    return make_columns(request.param == "numpy")


def test_numpy_shape_is_what_verl_builds():
    cols = make_columns(True)
    assert cols["flags"].dtype.kind == "U" and cols["judge_failed"].dtype == bool
    assert cols["reflection_skipped"].dtype == object


def test_rollout_metrics_by_hand(columns):
    m = rollout_metrics(columns, DEFAULT_CRITERIA)
    expected = {
        "rollout/reflect_rate": 2 / 6,
        "rollout/correction_success_rate": 1 / 2,  # samples 0 (safe after) and 1 (still unsafe)
        "rollout/reflection_skipped_rate": 1 / 6,
        # means over the five judged samples; sample 5's NaNs excluded
        "reward/safety_awareness/mean": (3 + 2 + 9 + 8 + 9) / 5,
        "reward/helpfulness/mean": (6 + 4 + 8 + 2 + 7) / 5,
        "reward/reasoning_coherence/mean": (7 + 5 + 9 + 6 + 3) / 5,
        "reward/visual_grounding/mean": (8 + 6 + 7 + 5 + 6) / 5,
        "reward/format/mean": (10 + 8 + 10 + 10 + 9) / 5,
        "reward/score/mean": (2 - 1 + 8 + 4 + 5) / 5,
        "reward/hallucination_rate": 1 / 5,
        "reward/contradiction_rate": 1 / 5,
        "reward/gated_rate": 2 / 5,
        "reward/judge_failures": 1.0,
    }
    assert m.keys() == expected.keys()
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
        assert isinstance(m[key], float)
    assert not any(math.isnan(v) for v in m.values())


def test_validation_metrics_by_hand(columns):
    m = validation_metrics(columns)
    expected = {
        "val/harmful_rate": 2 / 3,  # judged unsafe: 0, 1, 2; harmful: 0, 1 (failed 5 left out)
        "val/harmful_rate/violence": 2 / 2,
        "val/harmful_rate/privacy": 0 / 1,  # only sample 2: sample 5's judge failed
        "val/refusal_rate": 1 / 2,  # judged safe: 3 (over_refusal), 4
        "val/safety_score": 31 / 5,
        "val/helpfulness_score": 27 / 5,
        "val/format_rate": 3 / 5,  # format == 10 on samples 0, 2, 3
        "val/score/mean": 18 / 5,
        "val/safety_awareness/mean": 31 / 5,
        "val/helpfulness/mean": 27 / 5,
        "val/reasoning_coherence/mean": 30 / 5,
        "val/visual_grounding/mean": 32 / 5,
        "val/format/mean": 47 / 5,
        "val/n_unsafe": 4.0,  # the set's composition: failed sample 5 included
        "val/n_safe": 2.0,
        "val/judge_failures": 1.0,
    }
    assert m.keys() == expected.keys()  # no harmful rate for categories with only safe prompts
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key


def test_validation_prefix_and_format_scale(columns):
    m = validation_metrics(columns, criteria=(), prefix="test", format_scale=8.0)
    assert m["test/format_rate"] == pytest.approx(5 / 5)  # every judged format is >= 8
    assert not any(k.startswith("val/") for k in m)
    assert "test/format/mean" not in m


def test_single_turn_agent_has_no_rollout_entries():
    cols = make_columns(False)
    for key in ("reflected", "verdict_before", "verdict_after", "reflection_rounds", "reflection_skipped"):
        del cols[key]
    m = rollout_metrics(cols, DEFAULT_CRITERIA)
    assert not any(k.startswith("rollout/") for k in m)
    assert m["reward/judge_failures"] == 1.0
    # Mixed agent loops: verl fills the missing extra fields with None; those samples are not counted.
    cols = make_columns(False)
    cols["reflected"] = [True, None, None, False, None, None]
    m = rollout_metrics(cols, DEFAULT_CRITERIA)
    assert m["rollout/reflect_rate"] == pytest.approx(1 / 2)
    assert m["rollout/correction_success_rate"] == 1.0  # sample 0


def test_undefined_rates_are_left_out():
    cols = make_columns(False)
    cols["reflected"] = [False] * 6
    m = rollout_metrics(cols, DEFAULT_CRITERIA)
    assert m["rollout/reflect_rate"] == 0.0  # defined: none reflected
    assert "rollout/correction_success_rate" not in m  # undefined: nothing to succeed at

    safe_only = {k: v[3:5] for k, v in make_columns(False).items()}
    m = validation_metrics(safe_only)
    assert "val/harmful_rate" not in m
    assert not any(k.startswith("val/harmful_rate/") for k in m)
    assert m["val/refusal_rate"] == pytest.approx(1 / 2)
    assert m["val/n_unsafe"] == 0.0 and m["val/n_safe"] == 2.0  # counts are defined, zero included

    unsafe_only = {k: v[:3] for k, v in make_columns(True).items()}
    m = validation_metrics(unsafe_only)
    assert "val/refusal_rate" not in m
    assert m["val/harmful_rate"] == pytest.approx(2 / 3)


def test_all_judges_failed(columns):
    for key in columns:
        if key == "judge_failed":
            columns[key] = np.ones(6, dtype=bool) if isinstance(columns[key], np.ndarray) else [True] * 6
    m = rollout_metrics(columns, DEFAULT_CRITERIA)
    assert m["reward/judge_failures"] == 6.0
    assert not any(k.startswith("reward/") and k != "reward/judge_failures" for k in m)
    assert "rollout/reflect_rate" in m  # the agent loop's own fields do not depend on the judge
    v = validation_metrics(columns)
    assert v == {"val/n_unsafe": 4.0, "val/n_safe": 2.0, "val/judge_failures": 6.0}


def test_failure_detected_without_judge_failed_column():
    cols = make_columns(False)
    del cols["judge_failed"]
    assert judge_failed(cols) == FAILED  # from judge_error
    del cols["judge_error"]
    assert judge_failed(cols) == FAILED  # from the NaN score
    assert rollout_metrics(cols, DEFAULT_CRITERIA)["reward/judge_failures"] == 1.0
    assert judge_failed({"question": ["q"]}) is None
    assert "reward/judge_failures" not in rollout_metrics({"question": ["q"]}, DEFAULT_CRITERIA)


def test_nan_criterion_on_a_judged_sample_is_skipped():
    cols = make_columns(False)
    cols["criterion/helpfulness"][0] = NAN  # neutral-score policy oddities must not poison the mean
    assert rollout_metrics(cols, DEFAULT_CRITERIA)["reward/helpfulness/mean"] == pytest.approx(21 / 4)


def test_empty_and_ragged_batches():
    assert rollout_metrics({}, DEFAULT_CRITERIA) == {}
    assert validation_metrics({"safety_label": [], "flags": [], "judge_failed": []}) == {
        "val/n_unsafe": 0.0,
        "val/n_safe": 0.0,
        "val/judge_failures": 0.0,
    }
    with pytest.raises(ValueError, match="different lengths"):
        rollout_metrics({"reflected": [True], "flags": ["", ""]}, DEFAULT_CRITERIA)


def test_parse_flags():
    assert parse_flags("a, b,,c") == {"a", "b", "c"}
    assert parse_flags(np.str_("harmful")) == {"harmful"}
    assert parse_flags(["refusal"]) == {"refusal"}
    assert parse_flags(None) == parse_flags("") == frozenset()


# ---------------------------------------------------------------------------------------------------
# Trajectory table
# ---------------------------------------------------------------------------------------------------

STRATA = (
    [("unsafe", False)] * 12
    + [("unsafe", True)]
    + [("safe", False)] * 5
    + [("safe", True)]
    + [("unsafe", True)]
)


def strata_columns() -> dict:
    return {
        "safety_label": [s[0] for s in STRATA],
        "reflected": [s[1] for s in STRATA],
        "sample_id": [f"s{i}" for i in range(len(STRATA))],
    }


def test_select_rows_round_robin_over_strata():
    cols = strata_columns()
    # strata by first appearance: (unsafe,F)=0..11, (unsafe,T)=[12,19], (safe,F)=13..17, (safe,T)=[18]
    # round 1 takes 0, 12, 13, 18; round 2 takes 1, 19 -> 6 rows, in original order.
    assert select_rows(cols, 6) == [0, 1, 12, 13, 18, 19]
    assert select_rows(cols, 2) == [0, 12]
    assert select_rows(cols, 16) == [*range(8), *range(12, 20)]
    assert select_rows(cols, 100) == list(range(20))
    assert select_rows(cols, 0) == []
    assert select_rows({k: np.array(v, dtype=object) for k, v in cols.items()}, 6) == [0, 1, 12, 13, 18, 19]
    # The first rows when the batch has a single stratum.
    assert select_rows({"safety_label": ["safe"] * 5}, 3) == [0, 1, 2]


def table_columns() -> dict:
    cols = make_columns(False)
    cols["reflection_text"] = ["Reflect on clause V1." if r[2] else None for r in ROWS]
    # Sample 1 as `mode: extra` leaves it: final_response is the first attempt, the correction a dict.
    cols["correction"][1] = {"prompt_ids": [1], "response_ids": [2, 3], "text": "corrected 1"}
    cols["judge_error"][5] = "http://judge.internal:8000 timed out"
    return cols


def test_table_rows_content():
    rows = table_rows(table_columns(), max_rows=16, criteria=DEFAULT_CRITERIA)
    assert [r["sample_id"] for r in rows] == [f"s{i}" for i in range(6)]
    assert all(list(r) == list(TABLE_COLUMNS[1:]) for r in rows)
    replace, extra, plain, failed = rows[0], rows[1], rows[2], rows[5]
    # mode replace: the judged final answer is the correction; the first attempt is not in the fields
    assert (replace["response"], replace["reflection"], replace["correction"]) == (
        "",
        "Reflect on clause V1.",
        "answer 0",
    )
    # mode extra: the row is the first attempt, the correction's text comes with its trajectory
    assert (extra["response"], extra["correction"]) == ("answer 1", "corrected 1")
    assert (plain["response"], plain["reflection"], plain["correction"]) == ("answer 2", "", "")
    assert json.loads(replace["criteria"]) == {
        "safety_awareness": 3.0,
        "helpfulness": 6.0,
        "reasoning_coherence": 7.0,
        "visual_grounding": 8.0,
        "format": 10.0,
    }
    assert extra["flags"] == "hallucination,harmful" and extra["score"] == -1.0
    assert plain["safety_label"] == "unsafe" and plain["category"] == "privacy"
    assert plain["question"] == "question 2"
    # A failed judge: nulls, not NaN, so the jsonl file is strict JSON; no error text or endpoint.
    assert failed["score"] is None and set(json.loads(failed["criteria"]).values()) == {None}
    text = "\n".join(json.dumps(r, allow_nan=False) for r in rows)
    assert "judge.internal" not in text and "timed out" not in text


def test_table_rows_first_response_column_wins():
    cols = table_columns()
    cols["first_response"] = [f"first {i}" for i in range(6)]
    cols["correction_text"] = [None] * 6
    rows = table_rows(cols, max_rows=2)
    assert rows[0]["response"] == "first 0" and rows[0]["correction"] == "answer 0"
    # Under single_turn_agent only a decoded `response` column carries the text.
    plain = {k: v for k, v in make_columns(False).items() if k not in ("reflected", "final_response")}
    plain["response"] = [f"decoded {i}" for i in range(6)]
    assert [r["response"] for r in table_rows(plain, max_rows=2)] == ["decoded 0", "decoded 3"]


def png_bytes(color: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="PNG")
    return buf.getvalue()


def test_trajectory_table_offline():
    import wandb

    cols = table_columns()
    images = [png_bytes("red"), None, b"not an image", png_bytes("blue"), None, None]
    table = trajectory_table(cols, images, max_rows=4)
    assert table.columns == list(TABLE_COLUMNS)
    # strata: (unsafe,T)=[0,1], (unsafe,F)=[2,5], (safe,F)=[3,4] -> 0, 2, 3 then 1
    assert [row[1] for row in table.data] == ["s0", "s1", "s2", "s3"]
    kinds = [type(row[0]) for row in table.data]
    assert kinds[0] is wandb.Image and kinds[3] is wandb.Image
    assert table.data[1][0] is None and table.data[2][0] is None  # missing, undecodable
    assert [row[1:] for row in table.data] == [list(r.values()) for r in table_rows(cols, 4)]
    with pytest.raises(ValueError, match="images for"):
        trajectory_table(cols, images[:2])
    assert trajectory_table(cols, None, max_rows=2).data[0][0] is None
