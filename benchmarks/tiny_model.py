"""Benchmark the tiny offline model: cold build, cached lookup, load, forward and generate.

    python -m benchmarks.tiny_model [--tokenizers bpe qwen] [--repeats 3] [--quick]

Prints its table, then one JSON object (the last line). Targets (issue 2): build <= 30 s, load <= 1 s on a
2-core CPU. `--quick`: the `bpe` tokenizer only, one repeat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import Row, emit, target

BUILD_TARGET_S = 30
LOAD_TARGET_S = 1


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(tokenizer: str, repeats: int, workdir: Path) -> dict:
    import torch

    from saferl.generate import demo_image
    from saferl.models.checkpoint import load_vlm
    from saferl.models.tiny import ensure_tiny_model

    cache = workdir / tokenizer
    start = time.perf_counter()
    path = ensure_tiny_model(tokenizer=tokenizer, cache_dir=cache)
    build_s = time.perf_counter() - start
    cached_s = _median_time(lambda: ensure_tiny_model(tokenizer=tokenizer, cache_dir=cache), repeats)
    load_s = _median_time(lambda: load_vlm(path), repeats)

    processor, model = load_vlm(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[demo_image()], return_tensors="pt")
    with torch.no_grad():
        forward_s = _median_time(lambda: model(**inputs), repeats)
        generate_s = _median_time(
            lambda: model.generate(**inputs, max_new_tokens=16, min_new_tokens=16, do_sample=False), repeats
        )
    return {
        "build_s": round(build_s, 3),
        "cached_lookup_s": round(cached_s, 4),
        "load_s": round(load_s, 3),
        "forward_s": round(forward_s, 4),
        "generate_16_tokens_s": round(generate_s, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "checkpoint_mb": round(sum(f.stat().st_size for f in path.iterdir()) / 1e6, 2),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "targets_met": build_s <= BUILD_TARGET_S and load_s <= LOAD_TARGET_S,
    }


def headline(figures: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for tok, r in figures["results"].items():
        rows += [
            (f"{tok}: build (s)", r["build_s"], target(r["build_s"], "<=", BUILD_TARGET_S, " s")),
            (f"{tok}: load (s)", r["load_s"], target(r["load_s"], "<=", LOAD_TARGET_S, " s")),
            (f"{tok}: cached lookup (s)", r["cached_lookup_s"], ""),
            (f"{tok}: forward (s)", r["forward_s"], ""),
            (f"{tok}: generate 16 tokens (s)", r["generate_16_tokens_s"], ""),
            (f"{tok}: parameters", r["parameters"], ""),
        ]
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tiny_model", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tokenizers", nargs="+", default=None, choices=["bpe", "qwen"])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="bpe only, one repeat (unless given)")
    args = parser.parse_args(argv)
    tokenizers = args.tokenizers or (["bpe"] if args.quick else ["bpe", "qwen"])
    repeats = args.repeats or (1 if args.quick else 3)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        results = {tok: bench(tok, repeats, Path(tmp)) for tok in tokenizers}
    report = {
        "cpu_threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "repeats": repeats,
        "results": results,
    }
    return emit("tiny_model", report, headline(report))


if __name__ == "__main__":
    main()
