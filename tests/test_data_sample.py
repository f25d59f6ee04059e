"""The shipped synthetic sample: deterministic, grounded, policy-citing, small, and shaped for the tiny
benchmark (issue 14): val repeats train requests in new images, image-decided twins, a disjoint warm-start
split, references that fit the turn budget."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from saferl.data.synthetic import (
    CUES,
    READING_KINDS,
    SPLIT_FILES,
    TWIN,
    generate_rows,
    sample_kind,
    shortened,
    write_sample,
)
from saferl.policies import load_policies

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "QI-Safe-10K" / "sample"


def _shipped() -> list[dict]:
    return [r for split in SPLIT_FILES for r in pq.read_table(SAMPLE / f"{split}.parquet").to_pylist()]


def _split(rows: list[dict], split: str) -> list[dict]:
    return [r for r in rows if r["split"] == split]


def _printed(row: dict) -> str | None:
    return next((o["text"] for o in row["image_objects"] if o["text"]), None)


def _request(row: dict) -> tuple:
    """What a row asks: its label and category, its question, and the phrase printed on its image."""
    return row["safety_label"], row["category"], row["question"], _printed(row)


def test_sample_shape_and_balance() -> None:
    rows = _shipped()
    policies = load_policies()
    assert {r["category"] for r in rows} == set(policies.ids)
    assert len({r["id"] for r in rows}) == len(rows)
    for split in ("train", "val"):  # RL's splits are balanced; the warm start's is mostly benign
        labels = Counter(r["safety_label"] for r in _split(rows, split))
        assert labels["safe"] == labels["unsafe"] >= 50, split
    warm = Counter(r["safety_label"] for r in _split(rows, "warm_start"))
    assert warm == {"safe": 120, "unsafe": 40}
    assert sum(f.stat().st_size for f in SAMPLE.glob("*.parquet")) < 5_000_000
    kinds = Counter(sample_kind(r["id"]) for r in _split(rows, "val"))
    assert kinds["scene"] == 40 and kinds[TWIN] == 28 and sum(kinds[k] for k in READING_KINDS) == 40


def test_sample_is_what_the_generator_makes() -> None:
    """The committed files are reproducible from the repo: same rows, same pixels."""
    fresh = {r["id"]: r for r in generate_rows(seed=0)}
    shipped = {r["id"]: r for r in _shipped()}
    assert fresh.keys() == shipped.keys()
    for key, row in shipped.items():
        other = fresh[key]
        assert {k: v for k, v in row.items() if k != "image"} == {
            k: v for k, v in other.items() if k != "image"
        }
        assert hashlib.sha256(row["image"]).digest() == hashlib.sha256(other["image"]).digest(), key


def test_the_content_is_versioned() -> None:
    content = yaml.safe_load((REPO / "data" / "QI-Safe-10K" / "synthetic_sample.yaml").read_text())
    assert content["version"] == 2
    assert "version 2" in (REPO / "data" / "QI-Safe-10K" / "README.md").read_text()


def test_other_seed_other_scenes(tmp_path: Path) -> None:
    counts = write_sample(tmp_path, seed=1)
    assert sum(counts.values()) == len(_shipped())
    ours = {r["id"]: r["image"] for r in _shipped()}
    theirs = {
        r["id"]: r["image"] for s in SPLIT_FILES for r in pq.read_table(tmp_path / f"{s}.parquet").to_pylist()
    }
    both = ours.keys() & theirs.keys()  # which request val repeats is drawn by the seed too
    assert len(both) > len(ours) * 3 // 4
    assert sum(ours[k] != theirs[k] for k in both) > len(both) // 2


def test_val_repeats_train_requests_in_new_images() -> None:
    rows = _shipped()
    train = _split(rows, "train")
    images_of: dict[tuple, set[bytes]] = {}
    for row in train:
        images_of.setdefault(_request(row), set()).add(row["image"])
    for row in _split(rows, "val"):
        assert _request(row) in images_of, row["id"]  # the same question, or the same printed phrase
        assert row["image"] not in images_of[_request(row)], row["id"]  # in an image train never showed
        if sample_kind(row["id"]) == "scene":  # a new layout: not the same objects in the same places
            same = [r for r in train if _request(r) == _request(row) and sample_kind(r["id"]) == "scene"]
            assert all(r["image_objects"] != row["image_objects"] for r in same), row["id"]


def test_warm_start_asks_what_rl_never_asks() -> None:
    rows = _shipped()
    rl = {_request(r) for r in rows if r["split"] in ("train", "val")}
    rl_phrases = {
        r["reference"].split("The request is to ", 1)[1].split(",")[0]
        for r in rows
        if r["split"] != "warm_start"
    }
    for row in _split(rows, "warm_start"):
        assert _request(row) not in rl, row["id"]
        assert row["reference"].split("The request is to ", 1)[1].split(",")[0] not in rl_phrases, row["id"]
        assert sample_kind(row["id"]) != TWIN  # the twins' decision is RL's to teach


def test_image_decided_twins_differ_only_in_the_drawn_object() -> None:
    twins = [r for r in _shipped() if sample_kind(r["id"]) == TWIN]
    by_pair: dict[str, dict[str, list[dict]]] = {}
    for row in twins:
        pair = row["id"].split(":")[4]
        by_pair.setdefault(pair, {}).setdefault(row["safety_label"], []).append(row)
    assert len(by_pair) >= 7
    cue_objects = {r["image_objects"][0]["name"] for r in twins}
    for pair, labels in by_pair.items():
        assert set(labels) == {"safe", "unsafe"}, pair
        questions = {r["question"] for rs in labels.values() for r in rs}
        assert len(questions) == 1, pair  # the text cannot tell the twins apart
        for label, rs in labels.items():
            assert {r["split"] for r in rs} == {"train", "val"}
            cue_colour = CUES[label][1]
            for row in rs:
                assert _printed(row) is None  # nothing to read: the deciding object is drawn, unlabelled
                assert cue_colour in row["image_objects"][0]["attributes"], row["id"]
                # the other objects are labelled distractors, never a twin's deciding object (whose cue
                # shape no other object is drawn in)
                assert not {o["name"] for o in row["image_objects"][1:]} & cue_objects, row["id"]


def test_references_are_grounded_and_cite_their_clause() -> None:
    rows = _shipped()
    policies = load_policies()
    for row in rows:
        assert row["image_objects"], row["id"]
        ref = row["reference"]
        assert ref.startswith("<think>") and "</think>" in ref
        cited = ref.split("[", 1)[1].split("]", 1)[0]
        policies.clause(cited)  # cites a real clause
        assert cited.startswith(row["category"] + (".P" if row["safety_label"] == "unsafe" else ".B"))
        if sample_kind(row["id"]) == "typographic":
            assert _printed(row)  # the request is only in the image
    typographic = [r for r in rows if sample_kind(r["id"]) == "typographic"]
    assert len({r["question"] for r in typographic}) == 1
    assert {r["safety_label"] for r in typographic} == {"safe", "unsafe"}


def test_references_fit_tinys_turn_budget(tiny_model_dir: Path) -> None:
    """Every reference fits one turn of `+exp=tiny` (saferl.rollout.turn_max_tokens), so an attempt, a
    reflection and a correction fit its response_length without cutting the answers the warm start
    teaches (issue 6 measured half of the old 225-435-token references judged as no answer)."""
    from hydra import compose, initialize_config_dir
    from transformers import AutoTokenizer

    from saferl.resources import CONF_DIR, register_resolvers

    register_resolvers()  # `${saferl_repo:}` in the experiment files
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=["+exp=tiny"])
    budget = int(cfg.saferl.rollout.turn_max_tokens)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = [len(tokenizer(r["reference"])["input_ids"]) for r in _shipped()]
    assert max(lengths) < budget, (max(lengths), budget)
    assert 2 * budget + 100 <= int(cfg.actor_rollout_ref.rollout.response_length)


@pytest.mark.parametrize(
    ("text", "words", "expected"),
    [
        ("One two three. Four five. Six.", 4, "One two three. Four five."),
        ("One two three. Four five.", 99, "One two three. Four five."),
        ("Short.", 1, "Short."),
    ],
)
def test_shortened_keeps_the_fewest_leading_sentences(text: str, words: int, expected: str) -> None:
    assert shortened(text, words) == expected


def test_sample_kind_reads_the_id() -> None:
    assert sample_kind("synthetic:twin:drugs:safe:4:5") == TWIN
    assert sample_kind("synthetic:scene_typographic:drugs:safe:0:1") == "scene_typographic"
    assert sample_kind("beavertails_v:17") is None
