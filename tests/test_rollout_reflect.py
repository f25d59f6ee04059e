"""`safe_reflect` inside verl's agent-loop machinery, on the Ray-hosted HF servers and the tiny model.

verl's own `AgentLoopWorker` runs the loop (agent-loop registry, Continuous Token bookkeeping, padding,
multi-modal inputs) with `HFServerManager` as its LLM client. The safety judge is the rule judge: the
untrained tiny model's text is no refusal, so it is "unsafe" on unsafe prompts and "safe" on benign
ones, which gives both branches in one batch.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
from verl.utils.dataset.rl_dataset import collate_fn
from verl_config import compose_trainer_config

from rewards.faults import JudgeFailureError
from rewards.judge import JudgeInput
from rewards.judges.rule import RuleJudge, split_response
from rewards.rubric import load_reward_config, rubric_from_config
from rewards.safety import safety_of
from rollout.server_manager import HFServerManager
from saferl.models.checkpoint import load_vlm

RESPONSE_LENGTH = 384  # an attempt and a correction (32 each at most), a reflection (~150 tiny-BPE tokens)


@pytest.fixture(scope="module")
def servers(ray_cluster, tiny_model_dir: Path):
    manager = HFServerManager.start(str(tiny_model_dir), num_servers=2, num_cpus_per_server=1)
    yield manager
    manager.shutdown()


@pytest.fixture(scope="module")
def rows(qi_val_dataset) -> list[dict]:
    picked = [qi_val_dataset[i] for i in range(len(qi_val_dataset))]
    unsafe = [r for r in picked if r["safety_label"] == "unsafe"][:3]
    safe = [r for r in picked if r["safety_label"] == "safe"][:3]
    return unsafe + safe


def trainer_config(model: Path, rollout: list[str] = (), reward: list[str] = ()):
    verl = [
        "actor_rollout_ref.rollout.name=vllm",  # the cluster engine; here HFServerManager serves
        "actor_rollout_ref.rollout.agent.default_agent_loop=safe_reflect",
        "actor_rollout_ref.rollout.prompt_length=512",
        f"actor_rollout_ref.rollout.response_length={RESPONSE_LENGTH}",
        "actor_rollout_ref.rollout.calculate_log_probs=true",
        "actor_rollout_ref.rollout.temperature=1.0",
        "data.custom_cls.path=pkg://saferl.data.dataset",
        "data.custom_cls.name=QISafeDataset",
    ]
    # Each turn capped, so there is room for the reflection and a correction.
    return compose_trainer_config(model, verl, reward=reward, rollout=["turn_max_tokens=32", *rollout])


def run_rollout(cfg, manager, rows: list[dict]) -> DataProto:
    worker = AgentLoopWorker(cfg, llm_client=manager)
    batch = DataProto.from_single_dict(collate_fn(rows))
    return asyncio.run(worker.generate_sequences(batch))


def _first_attempt(response_ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """With mask 1 on every model token, the first attempt is everything before the first 0."""
    zeros = (mask == 0).nonzero()
    end = int(zeros[0]) if len(zeros) else len(mask)
    return response_ids[:end].tolist()


@pytest.fixture(scope="module")
def whole(servers, rows: list[dict], tiny_model_dir: Path) -> DataProto:
    return run_rollout(trainer_config(tiny_model_dir, rollout=["reinforce=whole_trajectory"]), servers, rows)


def test_reflection_fires_exactly_when_the_judge_says_unsafe(
    whole: DataProto, tiny_model_dir: Path, rows
) -> None:
    processor, _ = load_vlm(tiny_model_dir)
    rubric = rubric_from_config(load_reward_config().rubric)
    judge = RuleJudge(rubric)
    nt = whole.non_tensor_batch
    assert set(nt["verdict_before"]) == {"unsafe", "safe"}  # both branches exercised
    for i in range(len(whole)):
        mask = whole.batch["response_mask"][i]
        first = _first_attempt(whole.batch["responses"][i], mask)
        text = processor.tokenizer.decode(first, skip_special_tokens=True)
        item = JudgeInput(
            "x",
            nt["question"][i],
            text,
            safety_label=nt["safety_label"][i],
            category=nt["category"][i],
            image_objects=list(nt["image_objects"][i]),
        )
        from rewards.scorer import RewardScorer

        [sample] = RewardScorer(rubric, judge).score_sync([item])
        expected = safety_of(sample, 5.0, answered=bool(split_response(text)[1])).verdict
        assert nt["verdict_before"][i] == expected
        assert nt["reflection_skipped"][i] is None
        assert bool(nt["reflected"][i]) == (expected == "unsafe")  # never on "no_answer"
        assert nt["reflection_rounds"][i] == (1 if expected == "unsafe" else 0)
        if nt["reflected"][i]:
            assert nt["clause_id"][i].startswith(nt["category"][i] + ".P")
            assert nt["verdict_after"][i] in ("safe", "unsafe")


def test_masks_mark_only_the_injected_reflection(whole: DataProto, tiny_model_dir: Path) -> None:
    processor, _ = load_vlm(tiny_model_dir)
    nt = whole.non_tensor_batch
    for i in range(len(whole)):
        mask = whole.batch["response_mask"][i]
        attention = whole.batch["attention_mask"][i, -RESPONSE_LENGTH:]
        ids = whole.batch["responses"][i]
        assert torch.all(mask <= attention)  # padding is never trained on
        if not nt["reflected"][i]:
            assert torch.equal(mask, attention)  # one turn: every real token is the model's
            continue
        real = int(attention.sum())
        runs = np.flatnonzero(np.diff(np.r_[1, mask[:real].numpy(), 1]))  # 1 -> 0 -> 1 boundaries
        assert len(runs) == 2, mask[:real]  # exactly one injected span
        injected = processor.tokenizer.decode(ids[runs[0] : runs[1]])
        assert "Your previous answer may be unsafe" in injected and nt["clause_id"][i] in injected
        assert "<|im_start|>user" in injected and injected.rstrip().endswith("<|im_start|>assistant")


def test_log_probs_match_a_forward_pass(whole: DataProto, tiny_model_dir: Path) -> None:
    _, model = load_vlm(tiny_model_dir)
    image_pad = model.config.image_token_id
    for i in range(len(whole)):
        prompt = whole.batch["prompts"][i]
        prompt = prompt[whole.batch["attention_mask"][i, : len(prompt)].bool()]
        n = int(whole.batch["attention_mask"][i, -RESPONSE_LENGTH:].sum())
        response = whole.batch["responses"][i, :n]
        mask = whole.batch["response_mask"][i, :n].bool()
        mm = whole.non_tensor_batch["multi_modal_inputs"][i]
        assert int((prompt == image_pad).sum()) == int(mm["image_grid_thw"].prod()) // 4 > 0  # image tokens
        ids = torch.cat([prompt, response]).unsqueeze(0)
        with torch.no_grad():  # with the processor's token types: the model's M-RoPE positions, as verl's
            logits = model(  # trainer computes them (a forward pass without them uses 1-D positions)
                input_ids=ids,
                mm_token_type_ids=(ids == image_pad).long(),
                pixel_values=mm["pixel_values"],
                image_grid_thw=mm["image_grid_thw"],
            ).logits
        logp = torch.log_softmax(logits[0, len(prompt) - 1 : -1].float(), dim=-1)
        recomputed = logp.gather(-1, response.unsqueeze(-1)).squeeze(-1)
        rollout = whole.batch["rollout_log_probs"][i, :n]
        assert torch.allclose(recomputed[mask], rollout[mask], atol=2e-3), (
            (recomputed[mask] - rollout[mask]).abs().max()
        )
        assert torch.all(rollout[~mask] == 0)


def test_correction_only_masks_the_unsafe_attempt(servers, rows: list[dict], tiny_model_dir: Path) -> None:
    out = run_rollout(trainer_config(tiny_model_dir), servers, rows)  # default: reinforce=correction_only
    processor, _ = load_vlm(tiny_model_dir)
    nt = out.non_tensor_batch
    assert any(nt["reflected"])
    for i in range(len(out)):
        mask = out.batch["response_mask"][i]
        if nt["reflected"][i]:
            ones = mask.nonzero().flatten()
            # Only the correction (the last assistant turn) carries mask 1: one contiguous run at the end.
            assert len(ones) > 0 and int(ones[-1] - ones[0] + 1) == len(ones)
            assert int(mask[: int(ones[0])].sum()) == 0
            # What the reward judged is that correction (the untrained model may end it at once: then both
            # are empty, which a truthiness check made a flaky failure).
            correction = out.batch["responses"][i][ones]
            decoded = processor.tokenizer.decode(correction, skip_special_tokens=True)
            assert decoded.strip() == str(nt["final_response"][i]).strip()


def test_correction_as_answer_trains_the_correction_on_the_original_prompt(
    servers, rows: list[dict], tiny_model_dir: Path
) -> None:
    """Off-policy guidance: a reflected trajectory becomes the original prompt and the correction alone
    (mask 1, the sampler's log probs under the reflection, for verl's importance weights); an unreflected
    one is unchanged."""
    cfg = trainer_config(tiny_model_dir, rollout=["reinforce=correction_as_answer"])
    cfg.algorithm.rollout_correction.rollout_is = "token"
    out = run_rollout(cfg, servers, rows)
    processor, _ = load_vlm(tiny_model_dir)
    nt = out.non_tensor_batch
    assert any(nt["reflected"]) and not all(nt["reflected"])
    for i in range(len(out)):
        mask = out.batch["response_mask"][i]
        attention = out.batch["attention_mask"][i, -RESPONSE_LENGTH:]
        assert torch.equal(mask, attention)  # every real response token is trained: no injected span
        n = int(attention.sum())
        text = processor.tokenizer.decode(out.batch["responses"][i, :n], skip_special_tokens=True)
        assert "Your previous answer may be unsafe" not in text
        assert text.strip() == nt["final_response"][i].strip()  # the correction (or the only answer)
        if nt["reflected"][i]:
            assert nt["first_response"][i] != nt["final_response"][i]
            assert torch.all(out.batch["rollout_log_probs"][i, :n] < 0)


def test_correction_as_answer_without_importance_weights_is_refused(servers, rows, tiny_model_dir) -> None:
    cfg = trainer_config(tiny_model_dir, rollout=["reinforce=correction_as_answer"])
    with pytest.raises(Exception, match=r"set algorithm\.rollout_correction\.rollout_is=token"):
        run_rollout(cfg, servers, rows)


def test_extra_mode_is_refused_with_the_reason(servers, rows, tiny_model_dir) -> None:
    # verl's agent-loop worker builds the loop through Hydra, which wraps the loop's ValueError.
    with pytest.raises(Exception, match=r"mode=extra is not supported: verl 0\.9\.1's agent loop yields one"):
        run_rollout(trainer_config(tiny_model_dir, rollout=["mode=extra"]), servers, rows)


def test_the_last_check_is_the_reward_verl_receives(whole: DataProto) -> None:
    """The loop's last safety check judged the final answer with the reward's judge: its score goes to
    verl as the trajectory's reward, so verl's reward loop does not judge the same answer again."""
    nt = whole.non_tensor_batch
    scores = whole.batch["rm_scores"].sum(dim=-1)
    assert torch.isfinite(scores).all()
    for i in range(len(whole)):
        assert nt["response"][i] == nt["final_response"][i]  # the judged text is the final answer
        assert float(scores[i]) == pytest.approx(float(nt["score"][i]))
        label = nt["safety_label"][i]
        assert (nt["harmful_rate"][i] is None) == (label != "unsafe")
        assert (nt["refusal_rate"][i] is None) == (label != "safe")


def test_a_separate_safety_judge_leaves_the_reward_to_verls_reward_loop(
    servers, rows, tiny_model_dir
) -> None:
    out = run_rollout(trainer_config(tiny_model_dir, rollout=["safety_check.judge.kind=rule"]), servers, rows)
    assert "rm_scores" not in out.batch.keys()  # noqa: SIM118  (a TensorDict refuses `in` on itself)
    assert "score" not in out.non_tensor_batch


def test_the_servers_weight_versions_survive_the_turns() -> None:
    """verl's trainer reads min/max_global_steps of every trajectory (trainer_base.py:1897), and its
    server client sets them on each turn's output (llm_server.py:158-162). A loop that rebuilt
    `extra_fields` without them failed verl at the end of step 1; the smoke run covers the whole path."""
    from rollout.reflect_loop import merge_server_fields

    first = {"global_steps": 3, "min_global_steps": 3, "max_global_steps": 3}
    later = {"global_steps": 4, "min_global_steps": 4, "max_global_steps": 4}
    assert merge_server_fields(first, later) == {
        "global_steps": 3,
        "min_global_steps": 3,
        "max_global_steps": 4,
    }
    assert merge_server_fields(first, {}) == first


def test_judge_failure_during_the_check_follows_the_fault_policy(servers, rows, tiny_model_dir) -> None:
    dead = [
        "judge.kind=openai",
        "judge.openai.base_url=http://127.0.0.1:9/v1",
        "judge.openai.max_retries=0",
        "judge.openai.timeout_s=2",
    ]
    tolerant = trainer_config(tiny_model_dir, reward=[*dead, "faults.min_samples=1000"])
    out = run_rollout(tolerant, servers, rows)
    nt = out.non_tensor_batch
    assert set(nt["verdict_before"]) == {"unknown"} and not any(nt["reflected"])  # no verdict, no reflection
    assert all("connection" in str(e) for e in nt["safety_check_error"])

    strict = trainer_config(
        tiny_model_dir, reward=[*dead, "faults.min_samples=2", "faults.max_failure_fraction=0.5"]
    )
    with pytest.raises(JudgeFailureError, match=r"judge at http://127\.0\.0\.1:9/v1 failed"):
        run_rollout(strict, servers, rows)


def test_safety_of_reads_safety_on_the_judges_own_scale() -> None:
    """The threshold is on 0..10; a rubric may score safety on another scale (3 of 5 is 6 of 10)."""
    from rewards.scorer import ScoredSample

    sample = ScoredSample("x", 1.0, criteria={"safety_awareness": 3.0})
    assert safety_of(sample, 5.0, safety_scale=5.0).verdict == "safe"  # 6.0 >= 5
    assert safety_of(sample, 5.0).verdict == "unsafe"  # 3.0 < 5 on the default 10-point scale
    assert safety_of(
        ScoredSample("y", 1.0, criteria={"safety_awareness": 9.0}, flags=["harmful"]), 5.0
    ).verdict == ("unsafe")


def test_a_response_with_no_answer_is_not_reflected_on() -> None:
    """Rubric v2 scores a cut-off answer's safety 2 (below the threshold) but it said nothing unsafe:
    reflecting on a benign request's cut-off answer ("may be unsafe") would teach refusing it."""
    from rewards.scorer import ScoredSample

    cut_off = ScoredSample("x", 0.2, criteria={"safety_awareness": 2.0}, flags=["bad_format"])
    assert safety_of(cut_off, 5.0, answered=False).verdict == "no_answer"
    assert safety_of(cut_off, 5.0, answered=True).verdict == "unsafe"
    harmful = ScoredSample("y", 0.0, criteria={"safety_awareness": 0.0}, flags=["harmful"])
    assert safety_of(harmful, 5.0, answered=False).verdict == "unsafe"  # harm in the reasoning still counts


def test_reflected_trajectories_go_to_the_run_reflection_log(servers, rows, tiny_model_dir, tmp_path) -> None:
    """Each reflected trajectory, and only those, is one line of the run's reflection log, with the same
    attempt, correction and verdicts the trajectory carries to verl (SRPO's reflection pairs read it)."""
    from rollout import reflection_log

    cfg = trainer_config(tiny_model_dir)
    cfg.trainer.default_local_dir = str(tmp_path)
    out = run_rollout(cfg, servers, rows)
    nt = out.non_tensor_batch
    reflected = [i for i in range(len(out)) if nt["reflected"][i]]
    assert reflected, "no unsafe attempt in the batch: the test needs one"
    records = list(reflection_log.read(tmp_path / reflection_log.LOG_DIR))
    assert sorted((r["attempt"], r["correction"]) for r in records) == sorted(
        (nt["first_response"][i], nt["final_response"][i]) for i in reflected
    )
    by_attempt = {r["attempt"]: r for r in records}
    for i in reflected:
        record = by_attempt[nt["first_response"][i]]
        assert record["verdict_before"] == nt["verdict_before"][i] == "unsafe"
        assert record["verdict_after"] == nt["verdict_after"][i]
        assert record["safety_label"] == nt["safety_label"][i] and record["category"] == nt["category"][i]
        assert record["correction_judgement"]["score"] == pytest.approx(float(nt["score"][i]))


def test_a_relative_run_directory_records_no_reflection_log(
    servers, rows, tiny_model_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    cfg = trainer_config(tiny_model_dir)
    cfg.trainer.default_local_dir = "relative/run"
    run_rollout(cfg, servers, rows[:1])
    assert not (tmp_path / "relative").exists()
