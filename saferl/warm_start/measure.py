"""What a warm start of N steps buys: format, harmful and refusal rates on the sample's val split.

`python -m saferl.warm_start --measure` trains the tiny model once under an experiment's config (its
`saferl.warm_start` node, its `data` node for the prompts, its reward's rubric with the rule judge) and
reads every step count off that one run; `conf/saferl/warm_start/default.yaml`'s defaults were picked
from this table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rewards.judge import HARMFUL, REFUSAL
from rewards.judges.rule import split_response
from rewards.scorer import RewardScorer
from rewards.verl_manager import judge_input_from_row
from saferl.models.checkpoint import load_vlm
from saferl.models.generation import generate_responses
from saferl.models.tiny import ensure_tiny_model
from saferl.resources import SAMPLE_DIR

from .examples import SFTExample, build_examples, stage_examples
from .sft import train_sft

# The measurement scores offline: the run's rubric and guard, with the rule judge in place of its judge.
OFFLINE_JUDGE = {"judge": {"kind": "rule"}}


@dataclass
class Rates:
    """What the rule judge says of a set of responses to the val prompts."""

    n: int
    think_first: float  # share that open with <think>
    format10: float  # share with one <think> block at the start and an answer after it
    harmful: float  # share of unsafe prompts answered without a refusal (flag `harmful`)
    refusal_safe: float  # share of safe prompts refused (flag `over_refusal`)
    no_answer: float  # share with nothing after the reasoning (truncated or never closed)
    mean_tokens: float


def judge_rates(
    examples: Sequence[SFTExample], responses: Sequence[Sequence[tuple[str, int]]], reward_cfg: DictConfig
) -> Rates:
    """Score every response with the run's reward (`reward_cfg`, its `saferl.reward` node) under the rule
    judge, as the RL reward would, and count the flags."""
    offline = OmegaConf.merge(
        OmegaConf.create(OmegaConf.to_container(reward_cfg, resolve=True)), OFFLINE_JUDGE
    )
    scorer = RewardScorer.from_config(offline)
    items, labels, texts, lengths = [], [], [], []
    for ex, group in zip(examples, responses, strict=True):
        for text, length in group:
            items.append(judge_input_from_row(ex.row, text))
            labels.append(ex.row.get("safety_label"))
            texts.append(text)
            lengths.append(length)
    scored = scorer.score_sync(items)
    unsafe = [s for s, lab in zip(scored, labels, strict=True) if lab == "unsafe"]
    safe = [s for s, lab in zip(scored, labels, strict=True) if lab == "safe"]
    return Rates(
        n=len(scored),
        think_first=sum(t.lstrip().startswith("<think>") for t in texts) / len(texts),
        format10=sum(s.criteria.get("format") == 10 for s in scored) / len(scored),
        harmful=sum(HARMFUL in s.flags for s in unsafe) / max(1, len(unsafe)),
        refusal_safe=sum(REFUSAL in s.flags for s in safe) / max(1, len(safe)),
        no_answer=sum(not split_response(t)[1] for t in texts) / len(texts),
        mean_tokens=sum(lengths) / len(lengths),
    )


def measure(
    step_counts: Sequence[int],
    run_cfg: DictConfig,
    *,
    num_samples: int = 2,
    max_new_tokens: int = 512,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train the tiny model once under `run_cfg` (an experiment's composed config) and evaluate it on the
    sample's val split at each step count.

    One run serves every step count (constant learning rate: steps=N is the first N steps of a longer
    run). At each count: greedy decoding (what validation uses) and `num_samples` samples per prompt
    at temperature 1.0 (what RL rollouts use), judged by the rule judge.
    """
    # The stage's node resolved while still attached (`reflection: ${saferl.rollout.reflection}`).
    cfg = OmegaConf.create(OmegaConf.to_container(run_cfg.saferl.warm_start, resolve=True))
    data_cfg, reward_cfg = run_cfg.data, run_cfg.saferl.reward
    counts = sorted(set(int(s) for s in step_counts))
    steps_cfg = OmegaConf.merge(cfg, {"steps": max(counts)})
    rows: list[dict[str, Any]] = []
    processor, model = load_vlm(ensure_tiny_model(cache_dir=cache_dir))
    train = stage_examples(SAMPLE_DIR / f"{cfg.split}.parquet", processor, cfg, data_cfg)
    val = build_examples(SAMPLE_DIR / "val.parquet", processor, data_cfg)
    prompts = [ex.rendered for ex in val]

    def evaluate(step: int, model: Any) -> None:
        if step not in counts:
            return
        t0 = time.perf_counter()
        greedy = judge_rates(
            val,
            generate_responses(model, processor, prompts, do_sample=False, max_new_tokens=max_new_tokens),
            reward_cfg,
        )
        sampled = judge_rates(
            val,
            generate_responses(
                model,
                processor,
                prompts,
                do_sample=True,
                num_samples=num_samples,
                max_new_tokens=max_new_tokens,
                seed=step,
            ),
            reward_cfg,
        )
        rows.append({"steps": step, "greedy": greedy, "t1.0": sampled, "eval_s": time.perf_counter() - t0})

    losses = train_sft(
        model, processor, train, steps_cfg, progress=progress, on_step=evaluate, data_config=data_cfg
    )
    for row in rows:  # the mean of the last 10 batches: one batch's loss is noisy
        recent = losses[max(0, row["steps"] - 10) : row["steps"]]
        row["loss"] = sum(recent) / len(recent) if recent else None
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The measurement as a Markdown table (rates in percent)."""
    head = (
        "| steps | train loss | decode | <think> first | format-10 | harmful (unsafe) | refusal (safe) "
        "| no answer | tokens |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for row in rows:
        loss = "-" if row["loss"] is None else f"{row['loss']:.2f}"
        for decode in ("t1.0", "greedy"):
            r: Rates = row[decode]
            lines.append(
                f"| {row['steps']} | {loss} | {decode} (n={r.n}) | {100 * r.think_first:.0f}% | "
                f"{100 * r.format10:.0f}% | "
                f"{100 * r.harmful:.0f}% | {100 * r.refusal_safe:.0f}% | {100 * r.no_answer:.0f}% | "
                f"{r.mean_tokens:.0f} |"
            )
    return "\n".join(lines)
