"""Benchmark the tiny offline model: cold build, cached lookup, load, forward and generate.

    python -m saferl.models.bench [--tokenizers bpe qwen] [--repeats 3]

Prints one JSON object. Targets (issue 2): build <= 30 s, load <= 1 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


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
        "targets_met": build_s <= 30 and load_s <= 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saferl.models.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tokenizers", nargs="+", default=["bpe", "qwen"], choices=["bpe", "qwen"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        results = {tok: bench(tok, args.repeats, Path(tmp)) for tok in args.tokenizers}
    report = {"cpu_threads": torch.get_num_threads(), "cores": os.cpu_count(), "results": results}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
