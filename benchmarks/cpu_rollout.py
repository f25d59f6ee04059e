"""Benchmarks for the CPU rollout path (`rollout/`): a table, then ONE JSON object (one key per section).

    python -m benchmarks.cpu_rollout [--requests 64] [--max-tokens 32] [--only SECTION] [--quick]

Why: the rollout servers exist so verl's agent loops can run on CPU at a usable speed. The throughput
section checks the two claims that justify their design: batching concurrent requests beats calling
`model.generate` one request at a time, and a second actor (on a second core) nearly doubles
throughput (target: 2 actors >= 1.6x 1 actor). Every run uses the same prompts (image + question from
the QI-Safe sample) and sampling settings, and forces every response to exactly `--max-tokens` tokens
(`min_tokens`), so tokens/s compare like for like. The reflection section checks that reflecting costs
what its extra tokens cost: the wall of a rollout where a fraction f reflects, against f = 0 on the
same prompts (`bench_reflection` says how it keeps that fair on a noisy box).

Progress goes to stderr as it happens: the expected run time at the start, each figure as it is
measured, each section's rows when it ends, the elapsed time at the end. stdout is the table, then
the JSON object as its last line: one key per section, plus `run` (quick or not, seconds per section
and in all).

Sections are functions `bench_<name>(args) -> dict` listed in `SECTIONS`; a new one is a function plus
one entry there (and its rows in `headline`). `--quick`: 32 requests, 3 repeats, f = 0.5 only (explicit
arguments still win); the speedup target is for the full sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import HEADER, Row, emit, table, target
from saferl.resources import SAMPLE_DIR

DATA_FILE = SAMPLE_DIR / "val.parquet"
TARGET_SPEEDUP_2_VS_1 = 1.6
# Ray ships call arguments over 100 KiB through the object store: every request's image (150 KB at the
# tiny model's 224x224 cap) then costs a raylet round trip, and on a 2-core box the raylet competes with
# the actors for CPU and delays arrivals enough to split batches. Inlining arguments up to 1 MiB removed
# that (measured: 2-actor throughput ~5.3K -> ~7.4K tokens/s, speedup 1.3x -> 1.75x). Whoever calls
# `ray.init` for CPU rollouts (the trainer) should pass the same setting.
RAY_SYSTEM_CONFIG = {"max_direct_call_object_size": 1 << 20}


_STARTED = time.perf_counter()


def progress(message: str) -> None:
    """A progress line on stderr, flushed, stamped with the seconds since the start: figures show as
    they are measured, and stdout stays the table and, last, the JSON line that `python -m benchmarks`
    reads (it streams stderr with -v)."""
    print(f"cpu_rollout [{time.perf_counter() - _STARTED:.0f} s]: {message}", file=sys.stderr, flush=True)


def _ensure_ray() -> None:
    """One Ray session for all sections (`main` shuts it down): a second `ray.init` costs seconds."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=os.cpu_count() or 2,
            include_dashboard=False,
            log_to_driver=False,
            _system_config=dict(RAY_SYSTEM_CONFIG),  # ray.init adds its own keys to the dict
        )


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
    max_batch_size: int,
    batch_wait_ms: float,
    repeats: int,
) -> dict[int, dict[str, Any]]:
    """All requests submitted at once to an `HFServerManager` over 1, then 2, 1-CPU actors; per count
    the median of `repeats` rounds (a round lasts about a second here, so one is noisy).

    Two actors are started once and the 1-server figure uses the first alone (the other idles): an
    actor start costs seconds to tens of seconds on a busy box, the bulk of a --quick run. The counts
    alternate round by round, so load that drifts during the run hits both alike."""
    from rollout.server_manager import HFServerManager

    pool = HFServerManager.start(
        str(model_path),
        num_servers=2,
        num_cpus_per_server=1,
        max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms,
    )
    managers = {n: HFServerManager(pool.servers[:n]) for n in (1, 2)}
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    try:
        # Warm every actor with a full round (first-call allocations, lazy imports), untimed.
        asyncio.run(_submit_all(pool, requests[: max_batch_size * 2], max_tokens, "warm"))
        for r in range(repeats):
            for n, manager in managers.items():
                runs[n].append(_timed_round(manager, requests, max_tokens, f"run{r}-{n}"))
                tokens_per_s = runs[n][-1]["tokens_per_s"]
                progress(f"throughput: round {r + 1}/{repeats}, {n} server(s): {tokens_per_s:g} tokens/s")
    finally:
        pool.shutdown()
    out: dict[int, dict[str, Any]] = {}
    for n, rounds in runs.items():
        median = sorted(rounds, key=lambda x: x["tokens_per_s"])[len(rounds) // 2]
        out[n] = {**median, "tokens_per_s_runs": [x["tokens_per_s"] for x in rounds]}
    return out


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
    from saferl.models.checkpoint import load_vlm
    from saferl.models.tiny import ensure_tiny_model

    model_path = ensure_tiny_model()
    processor, _ = load_vlm(model_path)
    requests = load_requests(processor, args.requests)
    in_process = run_in_process(model_path, requests, args.max_tokens, threads=1)
    progress(f"throughput: in-process generate {in_process['tokens_per_s']:g} tokens/s")
    _ensure_ray()
    servers = run_servers(
        model_path, requests, args.max_tokens, args.max_batch_size, args.batch_wait_ms, args.repeats
    )
    one, two = servers[1], servers[2]
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
        # Each round's 2-server figure over the 1-server one just before it: the spread of the speedup.
        "speedup_2_vs_1_runs": [
            round(b / a, 2) for a, b in zip(one["tokens_per_s_runs"], two["tokens_per_s_runs"], strict=True)
        ],
        "speedup_1_vs_inprocess": round(one["tokens_per_s"] / in_process["tokens_per_s"], 2),
        "target": f"speedup_2_vs_1 >= {TARGET_SPEEDUP_2_VS_1}",
        "target_met": speedup >= TARGET_SPEEDUP_2_VS_1,
    }


def _reflect_prompts(n: int, tokenizer: Any, processor: Any, workdir: Path) -> list[dict]:
    """`n` dataset rows (through QISafeDataset, as training sees them): the ONE prompt set that the
    baseline and every arm run, so arms differ in what is flagged, never in what is generated from."""
    from omegaconf import OmegaConf

    from saferl.data.dataset import QISafeDataset
    from saferl.data.verl_format import convert_dataset

    convert_dataset(DATA_FILE.parent, workdir)
    cfg = OmegaConf.create(
        {"max_prompt_length": 2048, "filter_overlong_prompts_workers": None, "cache_dir": str(workdir)}
    )
    dataset = QISafeDataset(str(workdir / "train.parquet"), tokenizer, cfg, processor=processor)
    return [dataset[i % len(dataset)] for i in range(n)]


def flag_unsafe(rows: list[dict], fraction: float) -> list[dict]:
    """Copies of `rows` with `safety_label` "unsafe" on round(fraction x n) of them, evenly spread, and
    "safe" on the rest; prompts, images and categories are untouched.

    Why this sets f: the rule judge reads the row's label, and the untrained tiny model never refuses,
    so a response to an "unsafe" row is judged unsafe and reflects, one to a "safe" row is not. Every
    row keeps its policy category, so a flagged row gets the category's reflection text."""
    n = len(rows)
    k = round(fraction * n)
    flagged = {int(j * n / k) for j in range(k)} if k else set()
    return [{**row, "safety_label": "unsafe" if i in flagged else "safe"} for i, row in enumerate(rows)]


def _reflect_round(worker: Any, manager: Any, rows: list[dict]) -> dict[str, Any]:
    """One timed `generate_sequences` over `rows`, with what the servers did during it.

    `model_tokens` is the servers' own count of generated tokens (attempts and corrections alike), not
    the response mask: with `reinforce: correction_only` the mask zeroes a reflected trajectory's first
    attempt, so its sum stays flat while the work grows with f."""
    from verl import DataProto
    from verl.utils.dataset.rl_dataset import collate_fn

    batch = DataProto.from_single_dict(collate_fn(rows))
    before = manager.stats()
    start = time.perf_counter()
    out = asyncio.run(worker.generate_sequences(batch))
    wall = time.perf_counter() - start
    after = manager.stats()
    pairs = list(zip(after, before, strict=True))
    return {
        "wall_s": wall,
        "model_tokens": sum(a["generated_tokens"] - b["generated_tokens"] for a, b in pairs),
        "generate_calls": sum(a["requests"] - b["requests"] for a, b in pairs),
        "reflected": int(sum(bool(x) for x in out.non_tensor_batch["reflected"])),
        "response_mask_tokens": int(out.batch["response_mask"].sum()),
    }


def _reflect_arm(rounds: list[dict[str, Any]], flagged: int, samples: int) -> dict[str, Any]:
    """An arm's figures over its repeats: medians, and the spread that says how far to trust them."""
    walls = [r["wall_s"] for r in rounds]
    wall = statistics.median(walls)
    return {
        "flagged_unsafe": flagged,
        "samples": samples,
        "wall_s": round(wall, 3),
        "wall_s_runs": [round(w, 3) for w in walls],
        # (max - min) / median over the repeats: the run-to-run noise this figure carries.
        "spread_pct": round(100 * (max(walls) - min(walls)) / wall, 1),
        "model_tokens": int(statistics.median(r["model_tokens"] for r in rounds)),
        "model_tokens_runs": [r["model_tokens"] for r in rounds],
        "generate_calls": int(statistics.median(r["generate_calls"] for r in rounds)),
        "reflected": int(statistics.median(r["reflected"] for r in rounds)),
        "response_mask_tokens": int(statistics.median(r["response_mask_tokens"] for r in rounds)),
    }


def bench_reflection(args: argparse.Namespace) -> dict[str, Any]:
    """Wall time of a `safe_reflect` rollout in which a fraction f of samples reflect, against f = 0.

    verl's AgentLoopWorker drives the loop on 2 Ray-hosted actors; the safety judge is the rule judge.
    Every arm, the baseline included, runs the SAME prompts; f is the fraction flagged unsafe
    (`flag_unsafe`), so an arm's extra wall is the reflections' and nothing else. Every turn is capped at
    --max-tokens, so a correction costs about what an attempt costs and the ideal wall is (1 + f) x the
    f = 0 wall; the target allows 5% over that.

    A round lasts a second or two and a busy 2-core box moves by +-30% from round to round, more than the
    margin to the bound, so the arms are interleaved (repeat r runs f = 0, then each f, back to back) and
    `ratio_to_f0` is the median over repeats of each repeat's own ratio: load that drifts over the run
    hits both sides of a ratio alike. One untimed round at the largest f first warms the servers and the
    loop (first batches, lazy imports, the judge).
    """
    import tempfile

    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    from rewards.rubric import load_reward_config
    from rollout.reflect_loop import load_rollout_config
    from rollout.server_manager import HFServerManager
    from saferl.models.checkpoint import load_vlm
    from saferl.models.tiny import ensure_tiny_model

    model_path = ensure_tiny_model()
    processor, _ = load_vlm(model_path)
    n = args.requests
    fractions = [0.0, *(f for f in args.reflect_fractions if f != 0)]
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

    _ensure_ray()
    manager = HFServerManager.start(
        str(model_path),
        num_servers=2,
        num_cpus_per_server=1,
        max_batch_size=args.reflect_batch_size,
        batch_wait_ms=args.batch_wait_ms,
    )
    rounds: dict[float, list[dict[str, Any]]] = {f: [] for f in fractions}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prompts = _reflect_prompts(n, processor.tokenizer, processor, Path(tmp))
        arms = {f: flag_unsafe(prompts, f) for f in fractions}
        worker = AgentLoopWorker(cfg, llm_client=manager)
        warm = _reflect_round(worker, manager, arms[fractions[-1]])
        progress(f"reflection: warm-up round (f={fractions[-1]:g}, untimed) {warm['wall_s']:.2f} s")
        for r in range(args.repeats):
            for f in fractions:
                result = _reflect_round(worker, manager, arms[f])
                rounds[f].append(result)
                progress(
                    f"reflection: repeat {r + 1}/{args.repeats} f={f:g}: {result['wall_s']:.2f} s, "
                    f"{result['model_tokens']} model tokens, {result['reflected']}/{n} reflected"
                )
    finally:
        manager.shutdown()
    results: dict[str, Any] = {f"f={f:g}": _reflect_arm(rounds[f], round(f * n), n) for f in fractions}
    base, base_rounds = results["f=0"], rounds[0.0]
    for f in fractions[1:]:
        entry = results[f"f={f:g}"]
        ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(rounds[f], base_rounds, strict=True)]
        entry["ratio_to_f0"] = round(statistics.median(ratios), 3)
        entry["ratio_to_f0_runs"] = [round(x, 3) for x in ratios]
        entry["ratio_of_medians"] = round(entry["wall_s"] / base["wall_s"], 3)
        entry["tokens_ratio_to_f0"] = round(entry["model_tokens"] / max(base["model_tokens"], 1), 3)
        entry["bound"] = round((1 + f) * 1.05, 3)
        entry["target_met"] = entry["ratio_to_f0"] <= entry["bound"]
    return {
        "servers": 2,
        "max_batch_size": args.reflect_batch_size,
        "turn_max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "order": "interleaved: each repeat runs " + ", ".join(f"f={f:g}" for f in fractions),
        "model_tokens_source": "servers' generated_tokens (HFGenerationServer.stats)",
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
# `--quick`'s defaults: 3 repeats, as a median of 2 is a mean that one slow round drags.
QUICK = {"requests": 32, "repeats": 3, "reflect_fractions": [0.5]}
# How long runs took on the 2-core box, printed at the start so whoever runs it knows what to expect:
# (seconds, 1-minute load average at the time). Time grows with the load: other work slows every actor.
MEASURED_S: dict[str, tuple[float, float]] = {"quick": (230, 19), "full": (310, 20)}


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
        base = r["f=0"]
        rows.append(
            (
                "reflection wall, f=0 (s)",
                base["wall_s"],
                f"median of {r['repeats']}, spread {base['spread_pct']:g}%",
            )
        )
        for key, entry in r.items():
            if key.startswith("f=") and key != "f=0":
                rows += [
                    (
                        f"reflection wall, {key} / f=0",
                        entry["ratio_to_f0"],
                        target(entry["ratio_to_f0"], "<=", entry["bound"]),
                    ),
                    (
                        f"reflection model tokens, {key} / f=0",
                        entry["tokens_ratio_to_f0"],
                        f"{entry['model_tokens']} vs {base['model_tokens']}",
                    ),
                ]
    return rows


def expected_run() -> str:
    """What a run should take, from `MEASURED_S`, beside the load now: the figures were taken with two
    training runs and tests sharing the 2 cores, so a quieter box should beat them (the previous version
    of this benchmark, which started more actors, did --quick in 57 s at a load of 1 to 3.6)."""
    (quick_s, quick_load), (full_s, full_load) = MEASURED_S["quick"], MEASURED_S["full"]
    return (
        f"measured: a full run ~{full_s / 60:.0f} min (load {full_load:g}), --quick ~{quick_s:.0f} s "
        f"(load {quick_load:g}); load now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen sections, each reported (stderr) as soon as it ends, then the table and the JSON."""
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    names = [name for name in SECTIONS if not args.only or name in args.only]
    progress(f"{', '.join(names)}; {expected_run()}")
    start = time.perf_counter()
    result: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    try:
        for name in names:
            section_start = time.perf_counter()
            result[name] = SECTIONS[name](args)
            seconds[name] = round(time.perf_counter() - section_start, 1)
            rows = [("cpu_rollout", *row) for row in headline({name: result[name]})]
            progress(f"{name} done in {seconds[name]:g} s\n{table(rows, HEADER)}")
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    elapsed = round(time.perf_counter() - start, 1)
    progress(f"done in {elapsed:g} s ({', '.join(f'{k} {v:g} s' for k, v in seconds.items())})")
    result["run"] = {"quick": args.quick, "section_s": seconds, "total_s": elapsed}
    return emit("cpu_rollout", result, headline(result))


if __name__ == "__main__":
    main()
