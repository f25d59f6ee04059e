"""SRPO's two steps on a run's composed config: `build_pairs` (the configured sources, the pairs file and
its manifest) and `train` (DPO on the pairs, cached by its inputs' fingerprint). `python -m saferl.srpo`
runs either alone; `saferl.train` runs both as the `srpo` stage of `saferl.stages`."""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rewards.scorer import RewardScorer
from rollout import reflection_log
from saferl.data.prompts import DATA_KEYS_FINGERPRINTED, dataset_config
from saferl.data.verl_format import validated_rows
from saferl.models.checkpoint import load_vlm, missing_checkpoint_files
from saferl.warm_start import build_examples, hash_model_dir

from . import adversarial
from .dpo import MARKER, train_dpo
from .mining import contrastive_pairs, mine_policy
from .pairs import ADVERSARIAL, CONTRASTIVE, MANIFEST_FILE, REFLECTION, SOURCES, manifest, write_pairs
from .reflections import reflection_pairs

logger = logging.getLogger("saferl.srpo")

STAGE_VERSION = 1
DPO_LOG = "dpo_log.jsonl"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def build_pairs(cfg: DictConfig, policies: list[str]) -> Path:
    """The configured sources over a split of `saferl.data.dir`, then the pairs file and its manifest.
    `policies` are what contrastive mining samples (`saferl.srpo.pairs.policies` when it names any)."""
    start = time.perf_counter()
    srpo = cfg.saferl.srpo
    sources = [str(x) for x in srpo.pairs.sources]
    if not sources or set(sources) - set(SOURCES):
        raise ValueError(f"saferl.srpo.pairs.sources={sources}: choose one or more of {list(SOURCES)}")
    if not cfg.saferl.data.dir:
        raise ValueError(
            "saferl.srpo builds pairs for a split of saferl.data.dir (a QI-Safe-10K directory): set it"
        )
    split_file = Path(cfg.saferl.data.dir) / f"{srpo.pairs.split}.parquet"
    if not split_file.is_file():
        raise FileNotFoundError(f"saferl.srpo.pairs.split={srpo.pairs.split}: no {split_file}")
    rows_by_id = {r["id"]: {**r, "sample_id": r["id"]} for r in validated_rows(split_file)}
    pairs_file = Path(srpo.pairs_file)
    threshold = float(srpo.pairs.safety_threshold)
    policies = [str(p) for p in srpo.pairs.policies] or policies
    rows: list[dict[str, Any]] = []
    skipped: dict[str, Counter[str]] = {}
    counts: Counter[str] = Counter()
    if CONTRASTIVE in sources:
        found, skipped[CONTRASTIVE] = _contrastive(cfg, policies, split_file, rows_by_id, counts)
        rows += found
    if REFLECTION in sources:
        log_dir = Path(srpo.pairs.reflections)
        records = list(reflection_log.read(log_dir)) if log_dir.is_dir() else []
        if not records:
            logger.warning("srpo: no reflection log in %s: no reflection pairs", log_dir)
        found, skipped[REFLECTION] = reflection_pairs(rows_by_id, records, threshold, policy=str(log_dir))
        counts["reflection_records"] = len(records)
        rows += found
    if ADVERSARIAL in sources:
        found, skipped[ADVERSARIAL], adv_counts = adversarial.build(cfg, rows_by_id, pairs_file.parent)
        counts.update(adv_counts)
        rows += found
    write_pairs(rows, pairs_file)
    summary = {
        **manifest(rows),
        "skipped": {source: dict(reasons) for source, reasons in skipped.items()},
        "policies": policies if CONTRASTIVE in sources else [],
        "generator": adversarial.config_summary(srpo.pairs.adversarial) if ADVERSARIAL in sources else None,
        "counts": dict(counts),
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }
    (pairs_file.parent / MANIFEST_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"saferl.srpo: {summary['pairs']} pairs ({summary['by_source'] or 'none'}; skipped "
        f"{summary['skipped']}; judge failures {counts['judge_failures']}; generator failures {counts['generator_failures']}) -> {pairs_file}",
        flush=True,
    )
    return pairs_file


def _contrastive(
    cfg: DictConfig, policies: list[str], split_file: Path, rows_by_id: dict, counts: Counter
) -> tuple[list[dict], Counter]:
    """Contrastive failure mining: every policy sampled and judged on the split's prompts."""
    srpo = cfg.saferl.srpo
    processor, _ = load_vlm(policies[0])
    examples = build_examples(split_file, processor, cfg.data, require_reference=False)
    if srpo.pairs.limit is not None:
        examples = examples[: int(srpo.pairs.limit)]
    counts["contrastive_prompts"] = len(examples)
    scorer = RewardScorer.from_config(cfg.saferl.reward)
    mined = []
    for policy in policies:
        candidates, policy_counts = mine_policy(
            policy, examples, scorer, srpo.pairs, cfg.saferl.reward, Path(srpo.pairs_file).parent
        )
        mined.append(candidates)
        counts.update(policy_counts)
    prompts = {e.row["sample_id"]: rows_by_id[e.row["sample_id"]] for e in examples}
    return contrastive_pairs(prompts, mined, float(srpo.pairs.safety_threshold))


def fingerprint(policy: str, pairs_file: str | Path, dpo_cfg: DictConfig, data_cfg: Any) -> str:
    """What a DPO checkpoint depends on: the starting policy's weights, the pairs, the DPO settings, and
    the data settings that render the prompts."""
    data = OmegaConf.to_container(dataset_config(data_cfg), resolve=True)
    payload = {
        "version": STAGE_VERSION,
        "policy": hash_model_dir(policy),
        "pairs": hashlib.sha256(Path(pairs_file).read_bytes()).hexdigest(),
        "dpo": OmegaConf.to_container(dpo_cfg, resolve=True),
        "data": {k: v for k, v in data.items() if k in DATA_KEYS_FINGERPRINTED},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def train(cfg: DictConfig, policy: str) -> Path:
    """DPO from `policy` on the pairs file into `saferl.srpo.output_dir/model`; an output with the same
    fingerprint is reused as it is."""
    start = time.perf_counter()
    srpo = cfg.saferl.srpo
    out = Path(srpo.output_dir) / "model"
    key = fingerprint(policy, srpo.pairs_file, srpo.dpo, cfg.data)
    try:
        done = json.loads((out / MARKER).read_text()).get("fingerprint") == key
    except (OSError, json.JSONDecodeError):
        done = False
    if done and not missing_checkpoint_files(out):
        print(f"saferl.srpo: DPO output {out} is up to date (fingerprint {key[:12]})", flush=True)
        return out
    out, history = train_dpo(policy, srpo.pairs_file, srpo.dpo, out, data_config=cfg.data, fingerprint=key)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # `accelerate launch`: the main process logs and reports
        return out
    margins = [h.get("rewards/margins", 0.0) for h in history]
    log = Path(srpo.output_dir) / DPO_LOG
    log.write_text("".join(json.dumps(h) + "\n" for h in history))
    print(
        f"saferl.srpo: DPO {len(history)} steps, reward margin {margins[0]:.3f} -> {margins[-1]:.3f}, "
        f"{time.perf_counter() - start:.0f} s, peak RSS {peak_rss_gib():.2f} GiB -> {out} (log {log})",
        flush=True,
    )
    return out
