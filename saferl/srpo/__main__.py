"""`python -m saferl.srpo pairs +exp=NAME [overrides]`, then `python -m saferl.srpo train +exp=NAME`.

`pairs` samples the experiment's policy (or `saferl.srpo.pairs.policies`) on a split of `saferl.data.dir`,
judges every answer and writes `saferl.srpo.pairs_file` with a manifest beside it; `train` runs DPO from the
experiment's policy on that file and writes `saferl.srpo.output_dir/model`.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from saferl.train import CONF_DIR, prepare_policy

logger = logging.getLogger("saferl.srpo")


def _run_dir(cfg: DictConfig) -> Path:
    from saferl.preflight import check_no_secrets

    check_no_secrets(cfg)
    with open_dict(cfg):
        cfg.trainer.default_local_dir = str(Path(cfg.trainer.default_local_dir).expanduser().resolve())
    run_dir = Path(cfg.trainer.default_local_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_pairs(cfg: DictConfig) -> Path:
    """The configured sources over a split of `saferl.data.dir`, then the pairs file and its manifest."""
    import pyarrow.parquet as pq

    from rollout import reflection_log
    from saferl.srpo.pairs import CONTRASTIVE, MANIFEST_FILE, REFLECTION, SOURCES, manifest, write_pairs
    from saferl.srpo.reflections import reflection_pairs

    start = time.perf_counter()
    run_dir = _run_dir(cfg)
    srpo = cfg.saferl.srpo
    sources = [str(x) for x in srpo.pairs.sources]
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        raise ValueError(f"saferl.srpo.pairs.sources={sources}: choose one or more of {list(SOURCES)}")
    if not cfg.saferl.data.dir:
        raise ValueError(
            "saferl.srpo pairs builds pairs for a split of saferl.data.dir (a QI-Safe-10K directory): set it"
        )
    split_file = Path(cfg.saferl.data.dir) / f"{srpo.pairs.split}.parquet"
    if not split_file.is_file():
        raise FileNotFoundError(f"saferl.srpo.pairs.split={srpo.pairs.split}: no {split_file}")
    rows_by_id = {r["id"]: {**r, "sample_id": r["id"]} for r in pq.read_table(split_file).to_pylist()}
    pairs_file = Path(srpo.pairs_file)
    threshold = float(srpo.pairs.safety_threshold)
    rows, skipped, counts, policies = [], {}, Counter(), []
    if CONTRASTIVE in sources:
        found, skipped[CONTRASTIVE], policies = _contrastive(cfg, run_dir, split_file, rows_by_id, counts)
        rows += found
    if REFLECTION in sources:
        log_dir = Path(srpo.pairs.reflections)
        records = list(reflection_log.read(log_dir)) if log_dir.is_dir() else []
        if not records:
            logger.warning("srpo: no reflection log in %s: no reflection pairs", log_dir)
        found, skipped[REFLECTION] = reflection_pairs(rows_by_id, records, threshold, policy=str(log_dir))
        counts["reflection_records"] = len(records)
        rows += found
    write_pairs(rows, pairs_file)
    summary = {
        **manifest(rows),
        "skipped": {source: dict(reasons) for source, reasons in skipped.items()},
        "policies": policies,
        "counts": dict(counts),
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gib": round(_peak_rss_gib(), 2),
    }
    (pairs_file.parent / MANIFEST_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"saferl.srpo: {summary['pairs']} pairs ({summary['by_source'] or 'none'}; skipped {summary['skipped']}; "
        f"judge failures {counts['judge_failures']}) -> {pairs_file}",
        flush=True,
    )
    return pairs_file


def _contrastive(
    cfg: DictConfig, run_dir: Path, split_file: Path, rows_by_id: dict, counts: Counter
) -> tuple[list[dict], Counter, list[str]]:
    """Contrastive failure mining: every policy sampled and judged on the split's prompts."""
    from rewards.scorer import RewardScorer
    from saferl.models.checkpoint import load_vlm
    from saferl.srpo.mining import contrastive_pairs, mine_policy
    from saferl.warm_start import build_examples

    srpo = cfg.saferl.srpo
    policies = [str(p) for p in srpo.pairs.policies]
    if not policies:
        prepare_policy(cfg, run_dir)
        policies = [str(cfg.actor_rollout_ref.model.path)]
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
    rows, skipped = contrastive_pairs(prompts, mined, float(srpo.pairs.safety_threshold))
    return rows, skipped, policies


def run_train(cfg: DictConfig) -> Path:
    """DPO from the experiment's policy on the pairs file."""
    from saferl.srpo.dpo import train_dpo

    start = time.perf_counter()
    run_dir = _run_dir(cfg)
    srpo = cfg.saferl.srpo
    prepare_policy(cfg, run_dir)
    out, history = train_dpo(
        cfg.actor_rollout_ref.model.path,
        srpo.pairs_file,
        srpo.dpo,
        Path(srpo.output_dir) / "model",
        data_config=cfg.data,
    )
    margins = [h.get("rewards/margins", 0.0) for h in history]
    log = Path(srpo.output_dir) / "dpo_log.jsonl"
    log.write_text("".join(json.dumps(h) + "\n" for h in history))
    print(
        f"saferl.srpo: DPO {len(history)} steps, reward margin {margins[0]:.3f} -> {margins[-1]:.3f}, "
        f"{time.perf_counter() - start:.0f} s, peak RSS {_peak_rss_gib():.2f} GiB -> {out} (log {log})",
        flush=True,
    )
    return out


RUNNERS = {"pairs": run_pairs, "train": run_train}
_command: list[str] = []  # the subcommand, taken off argv before Hydra parses the overrides


@hydra.main(config_path=str(CONF_DIR), config_name="srpo", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    RUNNERS[_command[0]](cfg)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in RUNNERS:
        sys.exit(f"usage: python -m saferl.srpo {{{'|'.join(RUNNERS)}}} +exp=NAME [overrides]")
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _command[:] = [command]
    sys.argv = [f"{sys.argv[0]} {command}", *rest]
    _hydra_main()


if __name__ == "__main__":
    main()
