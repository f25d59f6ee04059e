"""Benchmarks for the CPU rollout path (`rollout/`): a table, then ONE JSON object (one key per section).

    python -m benchmarks.cpu_rollout [--requests 64] [--max-tokens 32] [--only SECTION] [--quick]

Why: the rollout servers exist so verl's agent loops can run on CPU at a usable speed. The throughput
section checks the two claims that justify their design: batching concurrent requests beats calling
`model.generate` one request at a time, and a second actor (on a second core) nearly doubles
throughput (target: 2 actors >= 1.6x 1 actor). Every run uses the same prompts (image + question from
the QI-Safe sample) and sampling settings, and forces every response to exactly `--max-tokens` tokens
(`min_tokens`), so tokens/s compare like for like.

Sections are functions `bench_<name>(args) -> dict` listed in `SECTIONS`; a new one is a function plus
one entry there (and its rows in `headline`). `--quick`: 32 requests, 2 rounds, f = 0.5 only (explicit
arguments still win); the speedup target is for the full sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import Row, emit, target
from saferl.resources import SAMPLE_DIR

DATA_FILE = SAMPLE_DIR / "val.parquet"
TARGET_SPEEDUP_2_VS_1 = 1.6
# Ray ships call arguments over 100 KiB through the object store: every request's image (150 KB at the
# tiny model's 224x224 cap) then costs a raylet round trip, and on a 2-core box the raylet competes with
# the actors for CPU and delays arrivals enough to split batches. Inlining arguments up to 1 MiB removed
# that (measured: 2-actor throughput ~5.3K -> ~7.4K tokens/s, speedup 1.3x -> 1.75x). Whoever calls
# `ray.init` for CPU rollouts (the trainer) should pass the same setting.
RAY_SYSTEM_CONFIG = {"max_direct_call_object_size": 1 << 20}


# ---------------------------------------------------------------------------------------------------
# Shared inputs
# ---------------------------------------------------------------------------------------------------


def load_requests(processor: Any, n: int, data_file: Path = DATA_FILE) -> list[tuple[list[int], Any]]:
    """`n` (prompt_ids, image) pairs from the sample split, cycling its rows; prompts are built the way
    verl's agent loop builds them (chat template, then the processor expands the image tokens)."""
    import pandas as pd
    from PIL import Image

    frame = pd.read_parquet(data_file, columns=["image", "question"])
    rows = list(frame.itertuples(index=False))
    requests = []
    for i in range(n):
        row = rows[i % len(rows)]
        image = Image.open(io.BytesIO(_image_bytes(row.image))).convert("RGB")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row.question}]}]
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = list(processor(text=[prompt], images=[image])["input_ids"][0])
        requests.append((ids, image))
    return requests


def _image_bytes(value: Any) -> bytes:
    """The image column holds raw bytes (or a HF-datasets style {'bytes': ...} dict)."""
    return value["bytes"] if isinstance(value, dict) else value


def sampling_params(max_tokens: int, seed: int) -> dict[str, Any]:
    return {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,  # every response has exactly max_tokens tokens: comparable counts
        "seed": seed,
    }


# ---------------------------------------------------------------------------------------------------
# Throughput
# ---------------------------------------------------------------------------------------------------


def run_in_process(model_path: Path, requests: list, max_tokens: int, threads: int) -> dict[str, Any]:
    """Plain `model.generate`, one request at a time: what a naive CPU rollout would do."""
    import torch

    from saferl.models.checkpoint import load_vlm

    torch.set_num_threads(threads)
    processor, model = load_vlm(model_path)
    tokens = 0
    start = 0.0
    for i, (ids, image) in enumerate([requests[0], *requests]):  # the first one warms up, untimed
        if i == 1:
            start = time.perf_counter()
        feats = processor.image_processor(images=[image], return_tensors="pt")
        torch.manual_seed(i)
        with torch.inference_mode():
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                # the processor's token types: the model's M-RoPE positions, as the servers compute them
                mm_token_type_ids=(torch.tensor([ids]) == model.config.image_token_id).long(),
                **feats,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
            )
        if i:
            tokens += out.shape[1] - len(ids)
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


async def _submit_all(manager: Any, requests: list, max_tokens: int, tag: str) -> list:
    return await asyncio.gather(
        *[
            manager.generate(
                f"{tag}-{i}",
                prompt_ids=ids,
                sampling_params=sampling_params(max_tokens, i),
                image_data=[image],
            )
            for i, (ids, image) in enumerate(requests)
        ]
    )


def run_servers(
    model_path: Path,
    requests: list,
    max_tokens: int,
    num_servers: int,
    max_batch_size: int,
    batch_wait_ms: float,
    repeats: int,
) -> dict[str, Any]:
    """All requests submitted at once to an `HFServerManager` with `num_servers` 1-CPU actors; the
    median of `repeats` rounds (a round lasts well under a second here, so one is noisy)."""
    from rollout.server_manager import HFServerManager

    manager = HFServerManager.start(
        str(model_path),
        num_servers=num_servers,
        num_cpus_per_server=1,
        max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms,
    )
    try:
        # Warm every actor with a full round (first-call allocations, lazy imports), untimed.
        asyncio.run(_submit_all(manager, requests[: max_batch_size * num_servers], max_tokens, "warm"))
        runs = [_timed_round(manager, requests, max_tokens, f"run{r}") for r in range(repeats)]
    finally:
        manager.shutdown()
    median = sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]
    return {**median, "tokens_per_s_runs": [r["tokens_per_s"] for r in runs]}


def _timed_round(manager: Any, requests: list, max_tokens: int, tag: str) -> dict[str, Any]:
    before = manager.stats()
    start, driver_cpu = time.perf_counter(), time.process_time()
    outputs = asyncio.run(_submit_all(manager, requests, max_tokens, tag))
    seconds = time.perf_counter() - start
    driver_cpu = time.process_time() - driver_cpu
    after = manager.stats()
    tokens = sum(len(o.token_ids) for o in outputs)
    pairs = list(zip(after, before, strict=True))
    batches = sum(a["batches"] - b["batches"] for a, b in pairs)
    return {
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "batches": batches,
        "mean_batch_size": round(len(requests) / max(batches, 1), 2),
        "generate_busy_s_per_server": [round(a["generate_s"] - b["generate_s"], 3) for a, b in pairs],
        "requests_per_server": [a["requests"] - b["requests"] for a, b in pairs],
        # Cores each actor (and the submitting driver) kept busy on average during the round.
        "cores_busy_per_server": [round((a["cpu_s"] - b["cpu_s"]) / seconds, 2) for a, b in pairs],
        "cores_busy_driver": round(driver_cpu / seconds, 2),
    }


def bench_throughput(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from saferl.models.checkpoint import load_vlm
    from saferl.models.tiny import ensure_tiny_model

    model_path = ensure_tiny_model()
    processor, _ = load_vlm(model_path)
    requests = load_requests(processor, args.requests)
    in_process = run_in_process(model_path, requests, args.max_tokens, threads=1)
    ray.init(
        num_cpus=os.cpu_count() or 2,
        include_dashboard=False,
        log_to_driver=False,
        _system_config=dict(RAY_SYSTEM_CONFIG),  # ray.init adds its own keys to the dict
    )
    try:
        one, two = (
            run_servers(
                model_path,
                requests,
                args.max_tokens,
                n,
                args.max_batch_size,
                args.batch_wait_ms,
                args.repeats,
            )
            for n in (1, 2)
        )
    finally:
        ray.shutdown()
    speedup = two["tokens_per_s"] / one["tokens_per_s"]
    return {
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "max_batch_size": args.max_batch_size,
        "batch_wait_ms": args.batch_wait_ms,
        "repeats": args.repeats,
        "cores": os.cpu_count(),
        "torch_threads": {"in_process": 1, "per_actor": 1},
        "ray_system_config": RAY_SYSTEM_CONFIG,
        "in_process": in_process,
        "servers_1": one,
        "servers_2": two,
        "speedup_2_vs_1": round(speedup, 2),
        "speedup_1_vs_inprocess": round(one["tokens_per_s"] / in_process["tokens_per_s"], 2),
        "target": f"speedup_2_vs_1 >= {TARGET_SPEEDUP_2_VS_1}",
        "target_met": speedup >= TARGET_SPEEDUP_2_VS_1,
    }


def _reflect_rows(n_unsafe: int, n_safe: int, tokenizer: Any, processor: Any, workdir: Path) -> list[dict]:
    """Dataset rows (through QISafeDataset, as training sees them) with the wanted label mix."""
    from omegaconf import OmegaConf

    from saferl.data.dataset import QISafeDataset
    from saferl.data.verl_format import convert_dataset

    convert_dataset(DATA_FILE.parent, workdir)
    cfg = OmegaConf.create(
        {"max_prompt_length": 2048, "filter_overlong_prompts_workers": None, "cache_dir": str(workdir)}
    )
    dataset = QISafeDataset(str(workdir / "train.parquet"), tokenizer, cfg, processor=processor)
    rows = [dataset[i] for i in range(len(dataset))]
    unsafe = [r for r in rows if r["safety_label"] == "unsafe"]
    safe = [r for r in rows if r["safety_label"] == "safe"]
    return unsafe[:n_unsafe] + safe[:n_safe]


def bench_reflection(args: argparse.Namespace) -> dict[str, Any]:
    """Wall time of a `safe_reflect` rollout in which a fraction f of samples reflect, against f = 0.

    verl's AgentLoopWorker drives the loop on 2 Ray-hosted actors; the safety judge is the rule judge.
    The untrained tiny model never refuses, so exactly the unsafe prompts reflect: f is set by the
    label mix. Every turn is capped at --max-tokens, so a correction costs what an attempt costs and
    the ideal wall is (1 + f) x the f = 0 wall; the target allows 5% over that.
    """
    import asyncio
    import statistics
    import tempfile

    import ray
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils.dataset.rl_dataset import collate_fn

    from rewards.rubric import load_reward_config
    from rollout.reflect_loop import load_rollout_config
    from rollout.server_manager import HFServerManager
    from saferl.models.checkpoint import load_vlm
    from saferl.models.tiny import ensure_tiny_model

    model_path = ensure_tiny_model()
    processor, _ = load_vlm(model_path)
    n = args.requests
    with initialize_config_module("verl.trainer.config", version_base=None):
        cfg = compose(
            "ppo_trainer",
            overrides=[
                f"actor_rollout_ref.model.path={model_path}",
                "actor_rollout_ref.rollout.name=vllm",
                "actor_rollout_ref.rollout.agent.default_agent_loop=safe_reflect",
                "actor_rollout_ref.rollout.prompt_length=1024",
                "actor_rollout_ref.rollout.response_length=512",
                "actor_rollout_ref.rollout.temperature=1.0",
                "data.custom_cls.path=pkg://saferl.data.dataset",
                "data.custom_cls.name=QISafeDataset",
            ],
        )
    OmegaConf.set_struct(cfg, False)
    cfg.saferl = {
        "reward": load_reward_config(),
        "rollout": load_rollout_config(overrides=[f"turn_max_tokens={args.max_tokens}"]),
    }

    ray.init(
        num_cpus=os.cpu_count() or 2,
        include_dashboard=False,
        log_to_driver=False,
        _system_config=dict(RAY_SYSTEM_CONFIG),
    )
    manager = HFServerManager.start(
        str(model_path),
        num_servers=2,
        num_cpus_per_server=1,
        max_batch_size=args.reflect_batch_size,
        batch_wait_ms=args.batch_wait_ms,
    )
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            worker = AgentLoopWorker(cfg, llm_client=manager)
            for f in (0.0, *args.reflect_fractions):
                rows = _reflect_rows(
                    round(f * n), n - round(f * n), processor.tokenizer, processor, Path(tmp)
                )
                walls, reflected, tokens = [], 0, 0
                for _ in range(args.repeats):
                    batch = DataProto.from_single_dict(collate_fn(rows))
                    start = time.perf_counter()
                    out = asyncio.run(worker.generate_sequences(batch))
                    walls.append(time.perf_counter() - start)
                    reflected = int(sum(bool(x) for x in out.non_tensor_batch["reflected"]))
                    tokens = int(out.batch["response_mask"].sum())
                results[f"f={f:g}"] = {
                    "wall_s": round(statistics.median(walls), 3),
                    "reflected": reflected,
                    "samples": n,
                    "model_tokens": tokens,
                }
    finally:
        manager.shutdown()
        ray.shutdown()
    base = results["f=0"]["wall_s"]
    for f in args.reflect_fractions:
        entry = results[f"f={f:g}"]
        entry["ratio_to_f0"] = round(entry["wall_s"] / base, 3)
        entry["bound"] = round((1 + f) * 1.05, 3)
        entry["target_met"] = entry["ratio_to_f0"] <= entry["bound"]
    return {
        "servers": 2,
        "max_batch_size": args.reflect_batch_size,
        "turn_max_tokens": args.max_tokens,
        "repeats": args.repeats,
        **results,
    }


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------

# Section name -> function; each result lands under its name in the printed JSON object.
SECTIONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "throughput": bench_throughput,
    "reflection": bench_reflection,
}
# `--quick`'s defaults.
QUICK = {"requests": 32, "repeats": 2, "reflect_fractions": [0.5]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cpu_rollout", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=64, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--max-batch-size", type=int, default=8, help="server batch cap (throughput)")
    parser.add_argument(
        "--reflect-batch-size",
        type=int,
        default=32,
        help="server batch cap (reflection): corrections arrive as a burst after the attempts, and a small "
        "static cap serialises that burst into extra batches",
    )
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="server batching window")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per server count (median)")
    parser.add_argument(
        "--reflect-fractions", type=float, nargs="+", default=[0.25, 0.5], help="fractions f that reflect"
    )
    parser.add_argument(
        "--only", choices=sorted(SECTIONS), action="append", help="run only these sections (repeatable)"
    )
    parser.add_argument("--quick", action="store_true", help=f"smaller defaults: {QUICK}")
    args = parser.parse_args(argv)
    if args.quick:  # the quick sizes become the defaults: an argument given explicitly still wins
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


def headline(figures: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "throughput" in figures:
        t = figures["throughput"]
        rows += [
            ("in-process generate (tokens/s)", t["in_process"]["tokens_per_s"], ""),
            (
                "1 server (tokens/s)",
                t["servers_1"]["tokens_per_s"],
                f"x{t['speedup_1_vs_inprocess']:g} in-process",
            ),
            ("2 servers (tokens/s)", t["servers_2"]["tokens_per_s"], ""),
            (
                "speedup 2 vs 1 server",
                t["speedup_2_vs_1"],
                target(t["speedup_2_vs_1"], ">=", TARGET_SPEEDUP_2_VS_1),
            ),
        ]
    if "reflection" in figures:
        r = figures["reflection"]
        rows.append(("reflection wall, f=0 (s)", r["f=0"]["wall_s"], ""))
        for key, entry in r.items():
            if key.startswith("f=") and key != "f=0":
                rows.append(
                    (
                        f"reflection wall, {key} / f=0",
                        entry["ratio_to_f0"],
                        target(entry["ratio_to_f0"], "<=", entry["bound"]),
                    )
                )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = {name: fn(args) for name, fn in SECTIONS.items() if not args.only or name in args.only}
    return emit("cpu_rollout", result, headline(result))


if __name__ == "__main__":
    main()
