"""Contrastive failure mining, SRPO's `contrastive` source: sample K answers per prompt from each policy,
judge them with the reward's own judge and rubric, and keep the best safe answer against the worst.

Generation and judging go a chunk of prompts at a time, and each judged prompt is appended to a cache
(`candidates-<key>.jsonl`) before the next chunk starts, so a killed run resumes where it stopped. The key
covers everything a candidate depends on: the policy's weights, the sampling settings and the judge's
config; a changed setting starts a new cache rather than mixing answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rewards.verl_manager import judge_input_from_row
from saferl.models.checkpoint import load_vlm
from saferl.models.generation import generate_responses
from saferl.warm_start import hash_model_dir

from .pairs import CONTRASTIVE, Candidate, judgement_record, pair_row, pick_pair

logger = logging.getLogger("saferl.srpo")

CACHE_VERSION = 1


def cache_key(policy_hash: str, pairs_cfg: DictConfig, reward_cfg: DictConfig) -> str:
    """What a policy's candidates depend on: its weights, how it was sampled, and how it was judged."""
    sampling = {
        k: pairs_cfg[k] for k in ("samples_per_prompt", "temperature", "max_new_tokens", "batch_size", "seed")
    }
    payload = {
        "version": CACHE_VERSION,
        "policy": policy_hash,
        "sampling": OmegaConf.to_container(OmegaConf.create(sampling), resolve=True),
        "reward": OmegaConf.to_container(reward_cfg, resolve=True),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def read_cache(path: Path) -> dict[str, list[Candidate]]:
    """sample id -> its judged candidates; a torn last line (a kill mid-write) is dropped."""
    done: dict[str, list[Candidate]] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s: an unreadable line (a run killed mid-write) is mined again", path)
            continue
        done[entry["sample_id"]] = [
            Candidate.from_judgement(c["text"], c, entry["policy"]) for c in entry["candidates"]
        ]
    return done


def mine_policy(
    policy: str,
    examples: Sequence[Any],
    scorer: Any,
    pairs_cfg: DictConfig,
    reward_cfg: DictConfig,
    cache_dir: Path,
    progress: bool = True,
) -> tuple[dict[str, list[Candidate]], Counter[str]]:
    """Sample and judge `samples_per_prompt` answers per example from one policy (resuming its cache);
    return the candidates per sample id and counts (generated, cached, judge failures)."""
    from tqdm.auto import tqdm

    key = cache_key(hash_model_dir(policy), pairs_cfg, reward_cfg)
    cache = cache_dir / f"candidates-{key}.jsonl"
    done = read_cache(cache)
    counts: Counter[str] = Counter(cached_prompts=sum(e.row["sample_id"] in done for e in examples))
    todo = [e for e in examples if e.row["sample_id"] not in done]
    if not todo:
        return done, counts
    processor, model = load_vlm(policy)
    size = int(pairs_cfg.batch_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(cache, "a", encoding="utf-8") as out,
        tqdm(total=len(todo), desc=f"mining {Path(policy).name}", disable=not progress, unit="prompt") as bar,
    ):
        for begin in range(0, len(todo), size):
            chunk = todo[begin : begin + size]
            # A seed per chunk, from its first prompt: a resumed run samples what the first one would have.
            seed = int(pairs_cfg.seed) + int(
                hashlib.sha256(chunk[0].row["sample_id"].encode()).hexdigest()[:8], 16
            )
            responses = generate_responses(
                model,
                processor,
                [e.rendered for e in chunk],
                do_sample=True,
                num_samples=int(pairs_cfg.samples_per_prompt),
                max_new_tokens=int(pairs_cfg.max_new_tokens),
                temperature=float(pairs_cfg.temperature),
                seed=seed,
            )
            items = [
                judge_input_from_row(e.row, text)
                for e, rs in zip(chunk, responses, strict=True)
                for text, _ in rs
            ]
            scored = iter(scorer.score_sync(items))
            for example, rs in zip(chunk, responses, strict=True):
                entry = {
                    "sample_id": example.row["sample_id"],
                    "policy": policy,
                    "candidates": [{"text": text, **judgement_record(next(scored))} for text, _ in rs],
                }
                counts["judge_failures"] += sum(c["judge_error"] is not None for c in entry["candidates"])
                out.write(json.dumps(entry) + "\n")
                done[entry["sample_id"]] = [
                    Candidate.from_judgement(c["text"], c, policy) for c in entry["candidates"]
                ]
            out.flush()
            counts["generated_prompts"] += len(chunk)
            bar.update(len(chunk))
    return done, counts


def contrastive_pairs(
    prompts: dict[str, dict[str, Any]],
    per_policy: Sequence[dict[str, list[Candidate]]],
    threshold: float,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """One pair per prompt from every policy's candidates together; the prompts without one, by reason."""
    rows, skipped = [], Counter()
    for sample_id, prompt in prompts.items():
        candidates = [c for mined in per_policy for c in mined.get(sample_id, [])]
        picked = pick_pair(candidates, threshold)
        if isinstance(picked, str):
            skipped[picked] += 1
            continue
        rows.append(pair_row(prompt, *picked, source=CONTRASTIVE))
    return rows, skipped
