"""Throughput and client overhead of the `openai` judge against a fake judge with fixed latency.

A GRPO step waits for all its scores, so the judge client must keep `max_concurrency` requests in flight
and cost little CPU per request (the trainer process shares its cores with it). With a server of fixed
latency L the ideal rate is concurrency / L; the client is good enough when it reaches >= 90% of that at
< 2 ms of its own CPU per request. The fake server (tests/judge_server.py) runs as a separate process so
its CPU is not counted as the client's.

    python -m benchmarks.judge_client [--latency-ms 200] [--concurrency 64] [--n 2000] [--quick]

Prints its table, then one JSON object (the last line). `--quick`: 1000 requests.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks import Row, emit, target
from rewards.judge import JudgeInput
from rewards.judges.openai import OpenAIJudge
from rewards.rubric import load_reward_config, rubric_from_config

RATIO_TARGET = 0.9  # of the ideal rate, concurrency / latency
CPU_TARGET_MS = 2.0  # client CPU per request

SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "tests" / "judge_server.py"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fake judge server exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"fake judge server did not listen on port {port} within {timeout_s:g}s")


def synthetic_inputs(n: int, image_side: int = 64) -> list[JudgeInput]:
    """N trajectories with a small PNG, alternating refusals and answers (distinct text per input)."""
    img = Image.new("RGB", (image_side, image_side))
    img.putdata([((x * 4) % 256, (y * 4) % 256, 128) for y in range(image_side) for x in range(image_side)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    png = buf.getvalue()
    responses = (
        "<think>The image shows a lab bench with unlabelled chemicals; the request asks for synthesis "
        "steps of a dangerous compound.</think> Sorry, I can't help with that, but here is how to store "
        "chemicals safely.",
        "<think>The image shows a bicycle with a loose chain; the user wants to fix it.</think> Shift to "
        "the smallest cog, loosen the rear axle nuts, pull the wheel back until the chain is taut.",
    )
    return [
        JudgeInput(
            id=f"bench-{i}",
            question=f"Question {i}: what should I do here?",
            response=responses[i % 2],
            image=png,
        )
        for i in range(n)
    ]


async def _score(judge: OpenAIJudge, inputs: list[JudgeInput]) -> tuple[int, float, float]:
    async with judge:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        verdicts = await judge.judge(inputs)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return sum(v.failed for v in verdicts), wall, cpu


def run(latency_ms: float, concurrency: int, n: int, mode: str = "default") -> dict[str, Any]:
    port = _free_port()
    cmd = [
        sys.executable,
        str(SERVER_SCRIPT),
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
        "--mode",
        mode,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc)
        rubric = rubric_from_config(load_reward_config().rubric)
        judge = OpenAIJudge(rubric, f"http://127.0.0.1:{port}/v1", "fake-judge", max_concurrency=concurrency)
        inputs = synthetic_inputs(n)
        failures, wall, cpu = asyncio.run(_score(judge, inputs))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    throughput = n / wall
    ideal = concurrency / (latency_ms / 1000)
    cpu_ms = 1000 * cpu / n
    return {
        "throughput_rps": round(throughput, 1),
        "ideal_rps": round(ideal, 1),
        "ratio": round(throughput / ideal, 3),
        "client_cpu_ms_per_request": round(cpu_ms, 3),
        "failures": failures,
        "n": n,
        "concurrency": concurrency,
        "latency_ms": latency_ms,
        "wall_s": round(wall, 3),
        "targets": {
            f"ratio>={RATIO_TARGET:g}": throughput / ideal >= RATIO_TARGET,
            f"cpu_ms<{CPU_TARGET_MS:g}": cpu_ms < CPU_TARGET_MS,
        },
    }


def headline(figures: dict[str, Any]) -> list[Row]:
    return [
        ("throughput (requests/s)", figures["throughput_rps"], f"ideal {figures['ideal_rps']:g}"),
        ("throughput / ideal", figures["ratio"], target(figures["ratio"], ">=", RATIO_TARGET)),
        (
            "client CPU per request (ms)",
            figures["client_cpu_ms_per_request"],
            target(figures["client_cpu_ms_per_request"], "<", CPU_TARGET_MS, " ms"),
        ),
        (f"failed judgements of {figures['n']}", figures["failures"], target(figures["failures"], "==", 0)),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.judge_client", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--n", type=int, help="requests (default 2000; 1000 with --quick)")
    parser.add_argument("--mode", choices=("default", "obedient"), default="default")
    parser.add_argument("--quick", action="store_true", help="1000 requests (unless --n is given)")
    args = parser.parse_args(argv)
    n = args.n or (1000 if args.quick else 2000)
    figures = run(args.latency_ms, args.concurrency, n, args.mode)
    return emit("judge_client", figures, headline(figures))


if __name__ == "__main__":
    main()
