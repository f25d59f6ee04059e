"""The evaluation run: every checkpoint on every benchmark, generated, judged, summarised, resumable.

Generation and judging are separate passes with separate caches, both jsonl appended as work
completes (a chunk of `eval.chunk_size` items at a time, flushed and fsynced):

    DIR/generations/<checkpoint>/<benchmark>.jsonl      one line per item: the policy's answer
    DIR/judgements/<judge>/<checkpoint>/<benchmark>.jsonl one line per judged item: criteria, flags, score

A re-run reads both and does only what is missing, so a crash loses at most the chunk in flight, and
a finished evaluation can be judged again by another judge without generating again. A cache records
what it was made with (checkpoint path and sampling; judge identity) and refuses to be extended under
other settings: figures from two settings are never silently mixed. Judge failures are not cached
(a re-run retries them) and are counted, never scored.

Generation is the training path's own parts (`saferl.eval.rollout`): the same dataset class,
prompt template, chat template, image processing and agent loop (`eval.agent_loop`, default verl's
`single_turn_agent`: the policy's own answer, no reflection), with validation sampling
(`actor_rollout_ref.rollout.val_kwargs`). Judging is the reward's own scorer (`saferl.reward`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rewards.judge import JudgeInput
from rewards.scorer import RewardScorer
from saferl.config_schema import check_saferl_config
from saferl.data.benchmarks import load_benchmark
from saferl.data.verl_format import convert_rows
from saferl.eval.metrics import benchmark_metrics
from saferl.eval.report import (
    ResultEntry,
    build_results,
    judge_identity,
    merge_results,
    read_results,
    safe_name,
    write_report,
    write_results,
)
from saferl.eval.rollout import ReplicaRollout, decode_responses
from saferl.files import append_jsonl, read_jsonl, write_atomic
from saferl.launch import apply_platform_env, use_tiny_model
from saferl.preflight import check_no_secrets
from saferl.ray_cluster import init_ray

logger = logging.getLogger("saferl.eval")

BASE = "base"  # the checkpoint name of the experiment's own model (`actor_rollout_ref.model.path`)
_STEP_DIR = re.compile(r"^global_step_(\d+)$")


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    name: str  # a short, filesystem-safe name: the cache folder and the report's row label
    path: Path  # a Hugging Face model directory (config.json + weights + processor)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


# Where a training checkpoint keeps its Hugging Face model: verl writes it under
# `global_step_N/actor/huggingface` (`checkpoint.save_contents` with `hf_model`, conf/base.yaml).
_MODEL_SUBDIRS = (Path("huggingface"), Path("actor") / "huggingface", Path("actor"))


def _model_dir(path: Path) -> Path | None:
    """`path` itself, or the model directory inside a checkpoint `path`, if there is one."""
    for candidate in (path, *(path / sub for sub in _MODEL_SUBDIRS)):
        if _is_model_dir(candidate):
            return candidate
    return None


def _expand(entry: str, base_model: str | None) -> list[Checkpoint]:
    """One `eval.checkpoints` entry -> checkpoints. Accepted: `base`; a model directory; a training
    checkpoint `global_step_N` (its `actor/huggingface`); a run directory (each of its `global_step_N`,
    in step order); any of these as `NAME=PATH` to choose the name."""
    name, _, raw = entry.partition("=") if "=" in entry else ("", "", entry)
    if raw == BASE:
        if not base_model:
            raise ValueError("eval.checkpoints: `base` needs actor_rollout_ref.model.path")
        return [Checkpoint(name or BASE, Path(base_model))]
    path = Path(raw).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"eval.checkpoints: {raw}: no such file or directory")
    model = _model_dir(path)
    if model is not None:
        step = next((p for p in (model, *model.parents) if _STEP_DIR.match(p.name)), None)
        return [Checkpoint(name or (step.name if step else path.name), model)]
    steps = sorted(
        (int(m.group(1)), child, model)
        for child in path.iterdir()
        if (m := _STEP_DIR.match(child.name)) and (model := _model_dir(child)) is not None
    )
    if not steps:
        raise FileNotFoundError(
            f"eval.checkpoints: {raw}: not a model directory (no config.json), a global_step_N "
            "checkpoint or a run directory with global_step_N/actor/huggingface checkpoints"
        )
    prefix = f"{name}/" if name else ""
    return [Checkpoint(f"{prefix}{child.name}", model) for _, child, model in steps]


def resolve_checkpoints(entries: Sequence[str], base_model: str | None) -> list[Checkpoint]:
    """`eval.checkpoints` -> the checkpoints to evaluate, in order ([] = the experiment's model)."""
    found: list[Checkpoint] = []
    for entry in entries or [BASE]:
        found.extend(_expand(str(entry), base_model))
    names = [c.name for c in found]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(
            f"eval.checkpoints: two checkpoints are named {clashes}; name them with NAME=PATH entries"
        )
    return [Checkpoint(safe_name(c.name), c.path.resolve()) for c in found]


# ---------------------------------------------------------------------------------------------------
# jsonl caches
# ---------------------------------------------------------------------------------------------------


def check_meta(path: Path, meta: dict[str, Any]) -> None:
    """Write a cache's settings on first use; refuse to extend a cache made with other settings."""
    if path.is_file():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing != meta:
            changed = sorted(k for k in set(existing) | set(meta) if existing.get(k) != meta.get(k))
            raise ValueError(
                f"{path.parent}: cached with other settings ({', '.join(changed)}: "
                f"{ {k: existing.get(k) for k in changed} } -> { {k: meta.get(k) for k in changed} }); "
                "use another eval.output_dir or delete that folder"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(meta, indent=2, sort_keys=True).encode("utf-8"))


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------


def sampling_settings(cfg: DictConfig) -> dict[str, Any]:
    """What a cached generation depends on besides the weights (recorded in the cache's meta)."""
    rollout = cfg.actor_rollout_ref.rollout
    val = rollout.val_kwargs
    return {
        "agent_loop": str(cfg.eval.agent_loop),
        "temperature": float(val.temperature),
        "top_p": float(val.top_p),
        "top_k": int(val.top_k),
        "do_sample": bool(val.do_sample),
        "prompt_length": int(rollout.prompt_length),
        "response_length": int(rollout.response_length),
    }


class Generator:
    """Answers of one checkpoint on the benchmarks, through the training rollout path."""

    def __init__(self, cfg: DictConfig, checkpoint: Checkpoint) -> None:
        self.cfg = cfg.copy()
        self.cfg.actor_rollout_ref.model.path = str(checkpoint.path)  # the loop's tokenizer/processor
        self.rollout = ReplicaRollout(self.cfg)
        # The agent loop's own: prompts are built and answers decoded by one processor.
        self.processor = self.rollout.agent_worker.processor
        self.tokenizer = self.rollout.agent_worker.tokenizer

    def dataset(self, verl_file: Path) -> Any:
        from verl.trainer.ppo.utils import create_rl_dataset

        return create_rl_dataset(
            str(verl_file), self.cfg.data, self.tokenizer, self.processor, is_train=False, max_samples=-1
        )

    def generate(self, dataset: Any, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Records for dataset items `indices`: id, response, token count, turns (and reflection
        fields when the agent loop reflects)."""
        from verl.utils.dataset.rl_dataset import collate_fn

        rows = collate_fn([dataset[i] for i in indices])
        output = self.rollout.generate(
            rows, repeats=1, validate=True, agent_name=str(self.cfg.eval.agent_loop), step=0
        )
        responses = decode_responses(output, self.tokenizer)
        nt = output.non_tensor_batch
        lengths = output.batch["response_mask"].sum(dim=-1).tolist()
        records = []
        for i, response in enumerate(responses):
            record = {
                "id": str(nt["sample_id"][i]),
                "response": response,
                "response_tokens": int(lengths[i]),
                "num_turns": int(nt["__num_turns__"][i]) if "__num_turns__" in nt else None,
            }
            if "reflected" in nt:
                record["reflected"] = bool(nt["reflected"][i])
                record["first_response"] = str(nt["first_response"][i]) if "first_response" in nt else None
            records.append(record)
        return records

    def close(self) -> None:
        self.rollout.shutdown()


def dataset_ids(dataset: Any) -> list[str]:
    """The sample ids of a verl dataset, in item order, without decoding any image."""
    return [str(extra["id"]) for extra in dataset.dataframe["extra_info"]]


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


def scorer_identity(scorer: Any, reward_cfg: DictConfig) -> dict[str, Any]:
    """Who produced a figure, on what scale: recorded beside every number (credentials redacted)."""
    judge = reward_cfg.judge
    kind = str(judge.kind)
    model = {"rule": "rule", "openai": judge.openai.get("model"), "hf": judge.hf.get("model")}.get(kind)
    rubric = scorer.rubric
    return judge_identity(
        {
            "name": scorer.name,
            "kind": kind,
            "model": str(model),
            "endpoint": str(scorer.judge.endpoint),
            "rubric_version": int(rubric.version),
            "criterion_scales": {c.name: float(c.scale) for c in rubric.criteria},
            "weights": {c.name: float(c.weight) for c in rubric.criteria},
            "penalties": {k: float(v) for k, v in rubric.penalties.items()},
        }
    )


class Evaluation:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.eval = cfg.eval
        self.out = Path(str(cfg.eval.output_dir))
        self.out.mkdir(parents=True, exist_ok=True)
        self.checkpoints = resolve_checkpoints(
            list(self.eval.checkpoints or []), cfg.actor_rollout_ref.model.path
        )
        self.scorer = RewardScorer.from_config(cfg.saferl.reward)
        self.judge = scorer_identity(self.scorer, cfg.saferl.reward)
        self.chunk_size = int(self.eval.chunk_size)
        if self.chunk_size < 1:
            raise ValueError(f"eval.chunk_size={self.chunk_size}: must be >= 1")
        self.benchmarks: dict[str, list[dict[str, Any]]] = {}
        self.skipped: dict[str, list[str]] = {}

    # -- data ---------------------------------------------------------------------------------------

    def load_benchmarks(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = [str(b) for b in self.eval.benchmarks]
        if not names:
            raise ValueError("eval.benchmarks is empty: name at least one benchmark")
        locations = _plain(self.eval.get("locations"))
        options = _plain(self.eval.get("options"))
        unknown = sorted(set(locations) - set(names)) + sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"eval.locations/eval.options name benchmarks not in eval.benchmarks: {unknown}")
        limit = self.eval.limit
        if "qi_safe_val" in names and "qi_safe_val" not in locations and self.cfg.saferl.data.dir:
            locations["qi_safe_val"] = str(self.cfg.saferl.data.dir)  # the experiment's own QI-Safe-10K
        for name in names:
            rows = load_benchmark(name, locations.get(name), limit=limit, **(options.get(name) or {}))
            if not rows:
                raise ValueError(
                    f"benchmark {name!r}: no items read from {locations.get(name) or 'its default'}"
                )
            self.benchmarks[name] = rows
            path = self.out / "data" / f"{safe_name(name)}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(convert_rows(rows)), path)
            logger.info("benchmark %s: %d items", name, len(rows))
            print(f"saferl eval: benchmark {name}: {len(rows)} items", flush=True)

    # -- generation ---------------------------------------------------------------------------------

    def generation_file(self, checkpoint: Checkpoint, benchmark: str) -> Path:
        return self.out / "generations" / checkpoint.name / f"{safe_name(benchmark)}.jsonl"

    def generate(self) -> None:
        from tqdm import tqdm

        sampling = sampling_settings(self.cfg)
        for checkpoint in self.checkpoints:
            check_meta(
                self.out / "generations" / checkpoint.name / "meta.json",
                {"checkpoint_path": str(checkpoint.path), **sampling},
            )
            todo = {}
            for name, rows in self.benchmarks.items():
                done = {r["id"] for r in read_jsonl(self.generation_file(checkpoint, name))}
                missing = [r["id"] for r in rows if r["id"] not in done]
                print(
                    f"saferl eval: {checkpoint.name} / {name}: {len(rows) - len(missing)} generated "
                    f"(cached), {len(missing)} to generate",
                    flush=True,
                )
                if missing:
                    todo[name] = set(missing)
            if not todo:
                continue
            generator = Generator(self.cfg, checkpoint)
            try:
                for name, missing in todo.items():
                    dataset = generator.dataset(self.out / "data" / f"{safe_name(name)}.parquet")
                    ids = dataset_ids(dataset)
                    indices = [i for i, sample_id in enumerate(ids) if sample_id in missing]
                    dropped = sorted(missing - set(ids))
                    if dropped:  # verl's data.filter_overlong_prompts dropped them: say so, don't lose them
                        self.skipped[name] = dropped
                        logger.warning(
                            "%s: %d items longer than data.max_prompt_length=%s are not evaluated: %s",
                            name,
                            len(dropped),
                            self.cfg.data.max_prompt_length,
                            dropped[:5],
                        )
                    progress = tqdm(
                        total=len(indices), desc=f"generate {checkpoint.name}/{name}", unit="item"
                    )
                    for part in chunks(indices, self.chunk_size):
                        append_jsonl(
                            self.generation_file(checkpoint, name), generator.generate(dataset, part)
                        )
                        progress.update(len(part))
                    progress.close()
            finally:
                generator.close()

    # -- judging ------------------------------------------------------------------------------------

    def judgement_file(self, checkpoint: Checkpoint, benchmark: str) -> Path:
        return self.judge_dir / checkpoint.name / f"{safe_name(benchmark)}.jsonl"

    @property
    def judge_dir(self) -> Path:
        return self.out / "judgements" / safe_name(self.judge["name"])

    def judge_all(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Judgements of every generation, cached ones read back; failed ones this run kept in memory."""
        from tqdm import tqdm

        check_meta(self.judge_dir / "meta.json", self.judge)
        judged: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for checkpoint in self.checkpoints:
            for name, rows in self.benchmarks.items():
                by_id = {r["id"]: r for r in rows}
                generations = {g["id"]: g for g in read_jsonl(self.generation_file(checkpoint, name))}
                cached = {j["id"]: j for j in read_jsonl(self.judgement_file(checkpoint, name))}
                todo = [i for i in generations if i in by_id and i not in cached]
                failed: list[dict[str, Any]] = []
                progress = tqdm(total=len(todo), desc=f"judge {checkpoint.name}/{name}", unit="item")
                for part in chunks(todo, self.chunk_size):
                    inputs = [JudgeInput.from_row(by_id[i], generations[i]["response"]) for i in part]
                    samples = self.scorer.score_sync(inputs)
                    self.scorer.check_batch(samples)
                    records = [judgement_record(s) for s in samples]
                    append_jsonl(
                        self.judgement_file(checkpoint, name), [r for r in records if not r["judge_error"]]
                    )
                    failed.extend(r for r in records if r["judge_error"])
                    cached.update((r["id"], r) for r in records if not r["judge_error"])
                    progress.update(len(part))
                progress.close()
                judged[(checkpoint.name, name)] = [
                    {**item_fields(by_id[i], generations[i]), **cached[i]} for i in generations if i in cached
                ] + [{**item_fields(by_id[r["id"]], generations[r["id"]]), **r} for r in failed]
        return judged

    # -- figures ------------------------------------------------------------------------------------

    def summarise(self, judged: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
        threshold = float(self.cfg.saferl.rollout.safety_check.threshold)
        entries = []
        for checkpoint in self.checkpoints:
            for name, rows in self.benchmarks.items():
                records = judged[(checkpoint.name, name)]
                metrics = benchmark_metrics(
                    records, criterion_scales=self.judge["criterion_scales"], reflect_threshold=threshold
                )
                metrics["n_items"] = len(rows)
                metrics["n_not_generated"] = len(self.skipped.get(name, []))
                entries.append(ResultEntry(self.judge, checkpoint.name, str(checkpoint.path), name, metrics))
        # Earlier runs' figures in this output dir stay (another judge's section, other checkpoints).
        return merge_results(read_results(self.out), build_results(entries))

    def run(self) -> dict[str, Any]:
        self.load_benchmarks()
        self.generate()
        judged = self.judge_all()
        results = self.summarise(judged)
        write_results(results, self.out)
        paths = write_report(results, self.out)
        self.log_wandb(results, paths)
        print(
            f"saferl eval: results in {self.out / 'results.json'}, report {self.out / 'report.md'}",
            flush=True,
        )
        return results

    def log_wandb(self, results: dict[str, Any], paths: Sequence[Path]) -> None:
        if "wandb" in list(self.cfg.trainer.logger):
            log_wandb(results, paths, self.cfg, self.out)


def log_wandb(results: dict[str, Any], paths: Sequence[Path], cfg: DictConfig, out: Path) -> None:
    """The figures to W&B: one row per (judge, checkpoint, benchmark) in a table, every figure in the
    run summary under `eval/<judge>/<checkpoint>/<benchmark>/<metric>`, and the report's plots. The
    config is the resolved one, already checked for secrets."""
    import wandb
    from PIL import Image

    os.environ.setdefault("WANDB_DIR", str(out))
    run = wandb.init(
        project=str(cfg.trainer.project_name),
        name=f"{cfg.trainer.experiment_name}-eval",
        job_type="eval",
        dir=str(out),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    try:
        columns = [
            "judge",
            "checkpoint",
            "benchmark",
            "n",
            "safety_score",
            "helpfulness_score",
            "harmful_rate",
            "refusal_rate",
        ]
        table = wandb.Table(columns=columns)
        summary: dict[str, float] = {}
        for judge, section in results["judges"].items():
            for checkpoint, entry in section["checkpoints"].items():
                for benchmark, figures in {**entry["benchmarks"], "average": entry["average"]}.items():
                    table.add_data(judge, checkpoint, benchmark, *(figures.get(c) for c in columns[3:]))
                    for key, value in figures.items():
                        if isinstance(value, (int, float)) and not isinstance(value, bool):
                            summary[f"eval/{safe_name(judge)}/{checkpoint}/{benchmark}/{key}"] = value
        run.summary.update(summary)
        plots = {f"eval/plots/{p.stem}": wandb.Image(Image.open(p)) for p in paths if p.suffix == ".png"}
        run.log({"eval/results": table, **plots})
    finally:
        run.finish()


def _plain(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


def item_fields(row: dict[str, Any], generation: dict[str, Any]) -> dict[str, Any]:
    """The item's own fields a metric or a report row needs (no image bytes)."""
    return {
        "id": row["id"],
        "safety_label": row.get("safety_label"),
        "category": row.get("category"),
        "benchmark_category": row.get("benchmark_category"),
        "question": row.get("question"),
        "response": generation.get("response"),
        "reflected": generation.get("reflected"),
    }


def judgement_record(sample: Any) -> dict[str, Any]:
    return {
        "id": sample.id,
        "score": sample.score,
        "criteria": dict(sample.criteria),
        "penalties": dict(sample.penalties),
        "flags": list(sample.flags),
        "gated": bool(sample.gated),
        "judge_error": sample.judge_error,
    }


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Prepare (the platform, secrets, the tiny model), start Ray, evaluate."""
    check_no_secrets(cfg)
    check_saferl_config(cfg)
    OmegaConf.set_struct(cfg, False)
    apply_platform_env(cfg)  # before verl is imported: it picks its platform once
    import ray

    use_tiny_model(cfg)
    OmegaConf.resolve(cfg)
    evaluation = Evaluation(cfg)
    OmegaConf.save(cfg, evaluation.out / "config.yaml", resolve=True)
    init_ray(cfg)
    try:
        return evaluation.run()
    finally:
        ray.shutdown()
