"""SRPO (PST's preference stage): the pair ranking, the pairs file, DPO through TRL on the tiny model, and
the `python -m saferl.srpo` commands on the shipped sample."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from judge_server import FakeJudgeServer
from omegaconf import OmegaConf

from rewards.judges.chat_client import ReplyError
from saferl.srpo.adversarial import adversarial_pairs, describe_scene, parse_reply, render_prompt
from saferl.srpo.mining import contrastive_pairs, read_cache
from saferl.srpo.pairs import (
    ADVERSARIAL,
    CONTRASTIVE,
    REFLECTION,
    Candidate,
    PairsError,
    pair_row,
    pick_pair,
    validate_pairs,
    write_pairs,
)
from saferl.srpo.reflections import reflection_pairs

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "QI-Safe-10K" / "sample"
THRESHOLD = 5.0


def cand(text, score, safety, helpful, reasoning=5.0, flags=()):
    return Candidate(
        text,
        score,
        {"safety_awareness": safety, "helpfulness": helpful, "reasoning_coherence": reasoning},
        tuple(flags),
    )


def test_pick_pair_ranks_safety_then_utility_then_reasoning():
    harmful = cand("here is how", 8.0, 9.0, 10.0, flags=["harmful"])  # flagged: loses whatever it scores
    low_safety = cand("vague hint", 6.0, 3.0, 9.0)  # below the gate without being an over-refusal
    refusal = cand("I can't", 2.0, 10.0, 3.0, flags=["refusal"])
    helpful_safe = cand("safe help", 1.0, 8.0, 7.0)
    # Safety first: the safe refusal beats both violations although they score higher.
    assert pick_pair([harmful, refusal], THRESHOLD) == (refusal, harmful)
    assert pick_pair([low_safety, refusal], THRESHOLD) == (refusal, low_safety)
    # Among safe answers the more helpful wins, even with the lower scalar score.
    assert pick_pair([refusal, helpful_safe, harmful], THRESHOLD) == (helpful_safe, harmful)
    # Then reasoning quality.
    coherent = cand("a", 5.0, 8.0, 7.0, reasoning=9.0)
    muddled = cand("b", 6.0, 8.0, 7.0, reasoning=2.0)
    assert pick_pair([muddled, coherent], THRESHOLD) == (coherent, muddled)
    # An over-refusal of a benign request is a utility failure, not a violation: it passes the gate.
    over = cand("I won't", 0.0, 2.0, 0.0, flags=["over_refusal", "refusal"])
    assert pick_pair([over, helpful_safe], THRESHOLD) == (helpful_safe, over)


def test_pick_pair_says_why_there_is_none():
    harmful = cand("x", 1.0, 0.0, 9.0, flags=["harmful"])
    assert pick_pair([harmful, cand("y", 2.0, 1.0, 8.0, flags=["harmful"])], THRESHOLD) == "no_safe_answer"
    same = cand("same", 5.0, 8.0, 7.0)
    assert pick_pair([same, cand("same", 5.0, 8.0, 7.0)], THRESHOLD) == "tie"
    failed = Candidate("judge down", math.nan, {}, ())
    assert pick_pair([same, failed], THRESHOLD) == "too_few"  # a failed judgement never enters a pair


def sample_prompts(n=4):
    rows = pq.read_table(SAMPLE / "train.parquet").to_pylist()
    picked = [r for r in rows if r["safety_label"] == "safe"][: n // 2]
    picked += [r for r in rows if r["safety_label"] == "unsafe"][: n - len(picked)]
    return [{**r, "sample_id": r["id"]} for r in picked]


def test_contrastive_pairs_count_what_they_skip_and_write_a_valid_file(tmp_path):
    prompts = {p["sample_id"]: p for p in sample_prompts(4)}
    ids = list(prompts)
    good, bad = cand("good", 6.0, 9.0, 8.0), cand("bad", -1.0, 1.0, 9.0, flags=["harmful"])
    mined = [
        {ids[0]: [good, bad], ids[1]: [bad, bad], ids[2]: [good]},
        {ids[2]: [bad], ids[3]: [good, good]},  # a second policy adds to the same prompts
    ]
    rows, skipped = contrastive_pairs(prompts, mined, THRESHOLD)
    assert [r["sample_id"] for r in rows] == [ids[0], ids[2]]
    assert skipped == Counter({"no_safe_answer": 1, "tie": 1})
    path = write_pairs(rows + rows, tmp_path / "pairs.parquet")  # duplicates are dropped
    assert validate_pairs(path) == 2
    table = pq.read_table(path).to_pylist()
    assert table[0]["chosen"] == "good" and table[0]["rejected"] == "bad"
    assert table[0]["image"] == prompts[ids[0]]["image"] and table[0]["source"] == CONTRASTIVE


def test_validate_pairs_names_the_file_and_the_row(tmp_path):
    prompt = sample_prompts(2)[0]
    rows = [
        pair_row(prompt, cand("good", 6.0, 9.0, 8.0), cand("bad", 1.0, 1.0, 1.0), CONTRASTIVE),
        pair_row(prompt, cand("better", 7.0, 9.0, 9.0), cand("worse", 1.0, 1.0, 1.0), CONTRASTIVE),
    ]
    path = write_pairs(rows, tmp_path / "pairs.parquet")
    table = pq.read_table(path).to_pylist()
    table[1]["rejected"] = "  "
    import pyarrow as pa

    broken = tmp_path / "broken.parquet"
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(path)), broken)
    with pytest.raises(PairsError, match=r"broken.parquet row 1 .*rejected is empty"):
        validate_pairs(broken)
    table[1]["rejected"], table[1]["image"] = "worse", b"not an image"
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(path)), broken)
    with pytest.raises(PairsError, match=r"row 1 .*image does not decode"):
        validate_pairs(broken)
    text = tmp_path / "pairs.txt"
    text.write_text("chosen,rejected\n")
    with pytest.raises(PairsError, match=r"pairs.txt: not a readable parquet"):
        validate_pairs(text)


def judgement(score, safety, helpful, flags=(), error=None):
    criteria = {"safety_awareness": safety, "helpfulness": helpful, "reasoning_coherence": 5.0}
    return {"score": score, "criteria": criteria, "flags": list(flags), "judge_error": error}


def reflection_record(sample_id, before="unsafe", after="safe", correction_safety=9.0, error=None):
    return {
        "sample_id": sample_id,
        "attempt": "Sure, here is how.",
        "correction": "I can't help with that.",
        "verdict_before": before,
        "verdict_after": after,
        "attempt_judgement": judgement(-3.0, 0.0, 8.0, flags=["harmful"]),
        "correction_judgement": judgement(4.7, correction_safety, 6.0, flags=["refusal"], error=error),
        "global_step": 3,
    }


def test_reflection_pairs_keep_judged_safe_corrections_only():
    prompts = {p["sample_id"]: p for p in sample_prompts(4)}
    ids = list(prompts)
    records = [
        reflection_record(ids[0]),
        reflection_record(ids[1], after="unsafe"),  # the correction was unsafe too
        reflection_record(ids[2], error="judge down"),  # never silently kept
        reflection_record("not-in-the-data"),
        reflection_record(ids[3], correction_safety=2.0),  # the gate, checked again at the pairs' threshold
    ]
    rows, skipped = reflection_pairs(prompts, records, THRESHOLD, policy="run")
    assert [(r["sample_id"], r["chosen"], r["rejected"], r["source"]) for r in rows] == [
        (ids[0], "I can't help with that.", "Sure, here is how.", REFLECTION)
    ]
    assert rows[0]["policy"] == "run@step3"
    assert skipped == Counter(correction_unsafe=1, not_corrected=1, judge_failed=1, unknown_prompt=1)


def test_read_cache_drops_a_torn_last_line(tmp_path):
    cache = tmp_path / "candidates.jsonl"
    entry = {
        "sample_id": "a",
        "policy": "p",
        "candidates": [{"text": "t", "score": 1.0, "criteria": {}, "flags": []}],
    }
    cache.write_text(json.dumps(entry) + "\n" + json.dumps(entry)[:20])
    assert list(read_cache(cache)) == ["a"]


# ---------------------------------------------------------------------------------------------------
# DPO through TRL on the tiny model
# ---------------------------------------------------------------------------------------------------

WRONG = "<think>I will not think about it.</think>No."


def reference_pairs(tmp_path, n=8):
    """Pairs from the sample: its reference answer against a fixed non-answer."""
    rows = [
        pair_row(p, cand(p["reference"], 8.0, 9.0, 9.0), cand(WRONG, 0.0, 5.0, 0.0), CONTRASTIVE)
        for p in sample_prompts(n)
    ]
    return write_pairs(rows, tmp_path / "pairs.parquet")


def sequence_logps(model_dir, examples, answers):
    """log p(answer | prompt) per example, teacher forced with the warm start's collate (its own code,
    not TRL's), so the margin is measured independently of the trainer that raised it."""
    import torch

    from saferl.models.checkpoint import load_vlm
    from saferl.warm_start import IGNORE_INDEX, SFTExample, collate, end_of_turn

    processor, model = load_vlm(model_dir)
    eot = processor.tokenizer.encode(end_of_turn(processor), add_special_tokens=False)
    out = []
    with torch.no_grad():
        for ex, answer in zip(examples, answers, strict=True):
            target = processor.tokenizer.encode(answer, add_special_tokens=False) + eot
            one = SFTExample(ex.prompt_ids, target, ex.prompt_text, ex.images, ex.row)
            batch = collate([one], processor, 2048)
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, :-1].float()
            labels = batch["labels"][0, 1:]
            keep = labels != IGNORE_INDEX
            out.append(logits.log_softmax(-1)[keep].gather(-1, labels[keep][:, None]).sum().item())
    return out


def test_dpo_prompt_is_the_rl_prompt_token_for_token(tmp_path, tiny_model_dir):
    """TRL's own collator, fed what `preference_dataset` gives it, builds the prompt `build_examples`
    renders for RL and the answer as the warm start tokenises its target."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from saferl.models.checkpoint import load_vlm
    from saferl.srpo.dpo import pairs_as_data, preference_dataset
    from saferl.srpo.pairs import read_pairs
    from saferl.warm_start import build_examples, end_of_turn

    pairs = reference_pairs(tmp_path, n=2)
    processor, _ = load_vlm(tiny_model_dir)
    dataset = preference_dataset(pairs, processor)
    rl = build_examples(pairs_as_data(read_pairs(pairs), tmp_path / "as_data.parquet"), processor)
    batch = DataCollatorForVisionPreference(processor)([dict(dataset[0])])
    ids, attention, completion = (
        batch[k][0].tolist() for k in ("input_ids", "attention_mask", "completion_mask")
    )
    prompt = [t for t, a, c in zip(ids, attention, completion, strict=True) if a and not c]
    answer = [t for t, c in zip(ids, completion, strict=True) if c]
    assert prompt == rl[0].prompt_ids
    eot = processor.tokenizer.encode(end_of_turn(processor), add_special_tokens=False)
    assert (
        answer == processor.tokenizer.encode(read_pairs(pairs)[0]["chosen"], add_special_tokens=False) + eot
    )


def test_dpo_raises_the_chosen_over_rejected_margin(tmp_path, tiny_model_dir):
    from saferl.models.checkpoint import load_vlm, missing_checkpoint_files
    from saferl.srpo.dpo import pairs_as_data, train_dpo
    from saferl.srpo.pairs import read_pairs
    from saferl.warm_start import build_examples

    pairs = reference_pairs(tmp_path, n=8)
    cfg = OmegaConf.create(
        {
            "steps": 12,
            "batch_size": 4,
            "lr": 1e-3,
            "beta": 0.1,
            "loss_type": "sigmoid",
            "max_length": 1024,
            "reference": None,
            "seed": 0,
        }
    )
    out, history = train_dpo(tiny_model_dir, pairs, cfg, tmp_path / "model")
    assert not missing_checkpoint_files(out)
    assert len(history) == 12 and history[-1]["rewards/margins"] > history[0]["rewards/margins"]

    rows = read_pairs(pairs)
    processor, _ = load_vlm(tiny_model_dir)
    examples = build_examples(pairs_as_data(rows, tmp_path / "as_data.parquet"), processor)
    chosen = [r["chosen"] for r in rows]
    rejected = [r["rejected"] for r in rows]
    before = [
        c - r
        for c, r in zip(
            sequence_logps(tiny_model_dir, examples, chosen),
            sequence_logps(tiny_model_dir, examples, rejected),
            strict=True,
        )
    ]
    after = [
        c - r
        for c, r in zip(
            sequence_logps(out, examples, chosen), sequence_logps(out, examples, rejected), strict=True
        )
    ]
    grown = [a - b for a, b in zip(after, before, strict=True)]
    assert min(grown) > 0, grown  # every pair's log-likelihood margin grew
    # The checkpoint generates as the policy did: TRL's training-time config changes (its single eos, no
    # KV cache) are not saved. The policy saved the same way, untrained, is the reference.
    from saferl.models.checkpoint import save_vlm

    save_vlm(*reversed(load_vlm(tiny_model_dir)), tmp_path / "resaved")
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text()) == json.loads((tmp_path / "resaved" / name).read_text())


def test_parse_reply_takes_the_policys_format_only():
    assert parse_reply("  <think> a, so b. </think>\nSure: c.  ") == "<think>a, so b.</think>Sure: c."
    assert parse_reply("```\n<think>a</think>b\n```") == "<think>a</think>b"  # a fenced reply
    for bad in (
        "Sure: c.",
        "<think>a</think>",
        "<think> </think>b",
        "<think>a</think>b<think>c</think>d",
        "",
    ):
        with pytest.raises(ReplyError, match="bad reply"):
            parse_reply(bad)


def test_render_prompt_names_the_key_of_a_bad_placeholder():
    assert render_prompt("{question} {{x}}", {"question": "q"}, "k") == "q {x}"
    with pytest.raises(ValueError, match=r"prompts\.unsafe: bad placeholder .*'imag'"):
        render_prompt("{imag}", {"question": "q"}, "saferl.srpo.pairs.adversarial.prompts.unsafe")


def test_adversarial_pairs_keep_only_what_the_judge_finds_worse():
    prompts = {p["sample_id"]: p for p in sample_prompts(4)}
    safe_ids = [i for i, p in prompts.items() if p["safety_label"] == "safe"]
    unsafe_ids = [i for i, p in prompts.items() if p["safety_label"] == "unsafe"]
    reference = cand("ref", 9.0, 10.0, 6.0)
    comply = cand("sure", 0.0, 0.0, 0.0, flags=["harmful"])
    refuse = cand("no", 8.0, 10.0, 3.0)  # a refusal of an unsafe request: safe, so no negative
    over = cand("no", 0.2, 2.0, 0.0, flags=["over_refusal"])
    failed = Candidate("sure", math.nan, {}, ())
    judged = [
        (unsafe_ids[0], reference, comply),  # kept
        (unsafe_ids[1], reference, refuse),  # not_unsafe
        (safe_ids[0], cand("ref", 10.0, 10.0, 10.0), over),  # kept: the over-refusal ranks lower
        (safe_ids[1], over, cand("ref", 10.0, 10.0, 10.0)),  # not_worse: the judge prefers the generated one
        (unsafe_ids[0], comply, comply),  # reference_fails_gate
        (unsafe_ids[1], reference, failed),  # judge_failed
    ]
    rows, skipped = adversarial_pairs(prompts, judged, THRESHOLD)
    assert [(r["sample_id"], r["rejected"], r["source"]) for r in rows] == [
        (unsafe_ids[0], "sure", ADVERSARIAL),
        (safe_ids[0], "no", ADVERSARIAL),
    ]
    assert skipped == Counter(not_unsafe=1, not_worse=1, reference_fails_gate=1, judge_failed=1)


# ---------------------------------------------------------------------------------------------------
# The commands, end to end on the shipped sample
# ---------------------------------------------------------------------------------------------------


def srpo(command, run_dir, *overrides, exp="tiny", env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "saferl.srpo",
            command,
            f"+exp={exp}",
            f"trainer.default_local_dir={run_dir}",
            "saferl.warm_start.steps=20",
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=run_dir.parent,
        timeout=600,
    )


def test_srpo_pairs_then_train_resumes_and_loads(tmp_path, saferl_cache):
    run = tmp_path / "run"
    run.mkdir()
    pairs_args = ("saferl.srpo.pairs.limit=8", "saferl.srpo.pairs.max_new_tokens=64")
    first = srpo("pairs", run, *pairs_args)
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads((run / "srpo" / "pairs" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["contrastive_prompts"] == 8 and counts["generated_prompts"] == 8
    assert manifest["by_source"].get(CONTRASTIVE, 0) + sum(manifest["skipped"][CONTRASTIVE].values()) == 8
    assert manifest["pairs"] == sum(manifest["by_label"].values())
    assert (
        counts["reflection_records"] == 0 and "no reflection log" in first.stdout + first.stderr
    )  # no GRPO run here: said
    written = (run / "srpo" / "pairs" / "pairs.parquet").read_bytes()

    again = srpo("pairs", run, *pairs_args)  # everything is cached: nothing is sampled or judged again
    assert again.returncode == 0, again.stderr[-3000:]
    manifest = json.loads((run / "srpo" / "pairs" / "manifest.json").read_text())
    assert manifest["counts"].get("generated_prompts", 0) == 0 and manifest["counts"]["cached_prompts"] == 8
    assert (run / "srpo" / "pairs" / "pairs.parquet").read_bytes() == written

    if manifest["pairs"] == 0:
        pytest.fail(f"no pair from 8 prompts x 4 samples: {manifest}")
    trained = srpo("train", run, "saferl.srpo.dpo.steps=2", "saferl.srpo.dpo.batch_size=2")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "saferl.srpo: DPO 2 steps" in trained.stdout
    from saferl.models.checkpoint import load_vlm

    load_vlm(run / "srpo" / "model")  # what saferl.train and saferl.eval load


def test_srpo_pairs_reads_a_runs_reflection_log(tmp_path):
    from rollout import reflection_log

    run = tmp_path / "run"
    ids = [p["sample_id"] for p in sample_prompts(4)]
    log = reflection_log.log_path(run)
    for sample_id in ids:
        reflection_log.append(log, reflection_record(sample_id))
    log.write_text(log.read_text() + '{"sample_id": "torn')  # a worker killed mid-line
    done = srpo("pairs", run, "saferl.srpo.pairs.sources=[reflection]")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((run / "srpo" / "pairs" / "manifest.json").read_text())
    assert manifest["by_source"] == {REFLECTION: 4} and manifest["counts"]["reflection_records"] == 4
    assert "not a whole record" in done.stdout + done.stderr
    bad = srpo("pairs", run, "saferl.srpo.pairs.sources=[reflections]")
    assert bad.returncode != 0 and "choose one or more of" in bad.stdout + bad.stderr


def test_tiny_pst_runs_warm_start_then_srpo_and_caches_both(tmp_path):
    """`+exp=tiny_pst` through saferl.train: warm start, pairs, DPO, no GRPO; a second launch reuses
    both stages' outputs (their fingerprints are unchanged) and ends on the same policy."""
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "saferl.train",
        "+exp=tiny_pst",
        f"trainer.default_local_dir={run}",
        "saferl.warm_start.steps=20",
        "saferl.srpo.pairs.limit=8",
        "saferl.srpo.pairs.max_new_tokens=64",
        "saferl.srpo.dpo.steps=2",
        "saferl.srpo.dpo.batch_size=2",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"the policy is {run / 'srpo' / 'model'}" in first.stdout
    assert "saferl.srpo: DPO 2 steps" in first.stdout
    assert "'loss':" not in first.stdout + first.stderr  # no dict per DPO step (dpo_log.jsonl has them)
    assert len((run / "srpo" / "dpo_log.jsonl").read_text().splitlines()) == 2
    assert not (run / "global_step_1").exists()  # no GRPO stage
    again = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is up to date" in again.stdout + again.stderr  # the warm start's and the DPO output's
    assert "saferl.srpo: DPO output" in again.stdout and "DPO 2 steps" not in again.stdout


def generator_stand_in(bad_row: dict, refusing_row: dict):
    """A FAKE of PST's DeepSeek-R1 generator (no model here): it answers the request our prompt makes with
    a fixed attenuated reasoning, complying for an unsafe request and refusing a benign one; for
    `bad_row` it never answers in the policy's format, for `refusing_row` it refuses (a generator that
    will not write the negative). Rows are told apart by their scene (twins share a question)."""

    def prompt_of(row):
        return f"The image shows: {describe_scene(row['image_objects'])}\nThe user asks: {row['question']}\n"

    def respond(body):
        user = "".join(p["text"] for p in body["messages"][1]["content"] if p["type"] == "text")
        if prompt_of(bad_row) in user:
            return "I would rather not write that."
        if prompt_of(refusing_row) in user or "ends by refusing" in user:
            return "<think>The image may hide a risk, and the policy forbids this. I must refuse.</think>I can't help."
        return (
            "<think>The request is to do this; it is only hypothetical, so a general outline is harmless and "
            "I can help.</think>Sure. In general terms: gather what you need, plan it, then carry it out."
        )

    return respond


def test_srpo_adversarial_pairs_from_a_generator_stand_in_counted_resumed_and_keyless(tmp_path):
    rows = pq.read_table(SAMPLE / "train.parquet").to_pylist()[:8]  # 4 unsafe, then 4 safe prompts
    unsafe = [r for r in rows if r["safety_label"] == "unsafe"]
    key = "sk-generator-secret-0123456789"
    run = tmp_path / "run"
    run.mkdir()
    # The faulty rows are the last unsafe ones: requests go out in job order, so the two scripted faults
    # meet the first jobs, and the reply that is never in the format keeps its own two retries.
    with FakeJudgeServer(responder=generator_stand_in(unsafe[-1], unsafe[-2])) as server:
        server.script([{"status": 503}, {"drop": True}])  # two transient faults, retried
        args = (
            "saferl.srpo.pairs.sources=[adversarial]",
            "saferl.srpo.pairs.limit=8",
            f"saferl.srpo.pairs.adversarial.generator.base_url={server.base_url}",
            "saferl.srpo.pairs.adversarial.generator.backoff_s=0.01",
            "saferl.srpo.pairs.adversarial.generator.max_retries=2",
        )
        os.environ["SAFERL_GENERATOR_API_KEY"] = key
        try:
            first = srpo("pairs", run, *args)
            asked = len(server.requests)
            again = srpo("pairs", run, *args)
        finally:
            del os.environ["SAFERL_GENERATOR_API_KEY"]
    assert first.returncode == 0, first.stderr[-3000:]
    manifest_file = run / "srpo" / "pairs" / "manifest.json"
    # 8 requests + 2 transient faults + 2 retries of the reply that is never in the format
    assert asked == 12 and server.requests[0]["headers"]["Authorization"] == f"Bearer {key}"
    body = server.requests[-1]["body"]
    assert body["model"] == "deepseek-ai/DeepSeek-R1" and all(
        p["type"] == "text" for p in body["messages"][1]["content"]
    )
    assert "The image shows:" in body["messages"][1]["content"][0]["text"]  # the scene in words, for R1
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(server.requests) == asked + 3  # the resumed run asks again for the failed reply only
    manifest = json.loads(manifest_file.read_text())
    assert manifest["by_source"] == {ADVERSARIAL: 6}
    assert manifest["by_label"] == {"unsafe": 2, "safe": 4}
    assert manifest["skipped"][ADVERSARIAL] == {"generator_failed": 1, "not_unsafe": 1}
    assert manifest["counts"]["generator_failures"] == 1 and manifest["counts"]["adversarial_cached"] == 7
    assert manifest["generator"]["api_key_env"] == "SAFERL_GENERATOR_API_KEY"
    pairs = pq.read_table(run / "srpo" / "pairs" / "pairs.parquet").to_pylist()
    by_id = {r["id"]: r for r in rows}
    for pair in pairs:
        assert pair["chosen"] == by_id[pair["sample_id"]]["reference"]
        assert pair["rejected"].startswith("<think>") and pair["image"] == by_id[pair["sample_id"]]["image"]
        assert ("harmful" in pair["rejected_flags"]) == (pair["safety_label"] == "unsafe")
    shown = first.stdout + first.stderr + again.stdout + again.stderr + manifest_file.read_text()
    assert key not in shown and key not in (run / "srpo" / "pairs" / "adversarial.jsonl").read_text()


def test_qwen3b_pst_srpo_commands_on_the_tiny_model_with_stand_in_judge_and_generator(
    tmp_path, tiny_model_dir
):
    """The GPU experiment's steps 2 and 3 (conf/exp/qwen3b_pst.yaml) as a user types them, on CPU: the
    3B policy is the tiny model, and FAKES stand in for the 72B judge and the R1 generator."""
    run = tmp_path / "run"
    run.mkdir()
    env = {"SAFERL_DATA_DIR": str(SAMPLE)}
    common = (
        f"saferl.srpo.policy={tiny_model_dir}",  # step 1's output, in the 3B's place
        "saferl.srpo.pairs.limit=4",
        "saferl.srpo.pairs.max_new_tokens=32",
    )
    rows = pq.read_table(SAMPLE / "train.parquet").to_pylist()[:4]
    with FakeJudgeServer() as judge, FakeJudgeServer(responder=generator_stand_in(rows[0], rows[1])) as gen:
        env |= {"SAFERL_JUDGE_BASE_URL": judge.base_url, "SAFERL_GENERATOR_BASE_URL": gen.base_url}
        pairs = srpo("pairs", run, *common, exp="qwen3b_pst", env=env)
        assert pairs.returncode == 0, pairs.stderr[-3000:]
        assert len(gen.requests) >= 4 and len(judge.requests) >= 4 * 4 + 2 * 2
    manifest = json.loads((run / "srpo" / "pairs" / "manifest.json").read_text())
    assert manifest["counts"]["contrastive_prompts"] == 4 and manifest["counts"]["adversarial_requests"] == 4
    assert manifest["skipped"][ADVERSARIAL]["generator_failed"] == 1
    assert manifest["policies"] == [str(tiny_model_dir)] and manifest["pairs"] >= 1
    dpo = ("saferl.srpo.dpo.steps=1", "saferl.srpo.dpo.batch_size=1", "saferl.srpo.dpo.max_length=1024")
    trained = srpo("train", run, *common, *dpo, exp="qwen3b_pst", env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    from saferl.models.checkpoint import load_vlm

    load_vlm(run / "srpo" / "model")  # where qwen3b_pst's GRPO (step 4) starts: actor_rollout_ref.model.path
