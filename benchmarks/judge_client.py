"""Throughput and client overhead of the `openai` judge against a fake judge with fixed latency, beside a
plain thread pool posting the same request bodies: the anchor that says what this machine allows.

A GRPO step waits for all its scores (256 prompts x n=4 is ~1,000 judgements), so the judge client must
keep `max_concurrency` requests in flight and cost little CPU per request (the trainer process shares its
cores with it). With a server of fixed latency L the ideal rate is concurrency / L. On a busy machine
neither client reaches it, so each concurrency is measured for both clients in the same run, alternating
(async, anchor, async, anchor, ...), and the figure that travels is the ratio async / anchor.

- async: `rewards.judges.openai.OpenAIJudge` (aiohttp, images encoded once and off the loop).
- anchor: `requests` from a ThreadPoolExecutor of C threads (one session each), posting the judge's own
  `_payload` bodies and parsing with its own `_verdict`: the same client work, a different transport.

Inputs come in groups of `--group` (GRPO's n) sharing one image, as a step's rollouts do; the image cache
is emptied before each arm so both pay for the same encodings. The fake server (tests/judge_server.py)
runs as a separate process so its CPU is not counted as the client's; it also reports the most requests
it held at once (peak in flight). Client CPU is this process's CPU time (all threads) per request.

    python -m benchmarks.judge_client [--latency-ms 200] [--concurrency 64,256] [--n N] [--rounds 3]
                                      [--group 4] [--image-side 64] [--quick]

Default N: 2000 at C=64, 4000 at C=256 (else 16 C), 3 rounds; `--quick`: 800 and 2000 (else 8 C) and 2
rounds (1-2 minutes on a busy 2-core machine). Prints its table, then one JSON object (the last line): per
concurrency, both clients' ratio to ideal, client CPU ms per request and peak in flight (medians over the
rounds, each round's figures beside them), and async / anchor.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from benchmarks import Row, emit, target
from rewards.judge import JudgeInput
from rewards.judges.chat_client import IMAGE_CACHE, ReplyError
from rewards.judges.openai import OpenAIJudge
from rewards.rubric import load_reward_config, rubric_from_config

# Of the ideal rate, on an idle machine (issue 18); other concurrencies get the looser one.
RATIO_TARGETS = {64: 0.95, 256: 0.9}
RATIO_TARGET = 0.9
ANCHOR_TARGET = 1.0  # async / anchor: at least the thread pool's rate, busy machine or not
CPU_TARGET_MS = 1.0  # client CPU per request
N_DEFAULT = {64: 2000, 256: 4000}
N_QUICK = {64: 800, 256: 2000}

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


def _png(side: int, seed: int) -> bytes:
    img = Image.new("RGB", (side, side))
    img.putdata(
        [((x * 4 + seed) % 256, (y * 4) % 256, (seed * 7) % 256) for y in range(side) for x in range(side)]
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def synthetic_inputs(n: int, image_side: int = 64, group: int = 4) -> list[JudgeInput]:
    """N trajectories, alternating refusals and answers (distinct text per input), in groups of `group`
    that share one PNG (one bytes object, as a repeated batch has), distinct from group to group."""
    responses = (
        "<think>The image shows a lab bench with unlabelled chemicals; the request asks for synthesis "
        "steps of a dangerous compound.</think> Sorry, I can't help with that, but here is how to store "
        "chemicals safely.",
        "<think>The image shows a bicycle with a loose chain; the user wants to fix it.</think> Shift to "
        "the smallest cog, loosen the rear axle nuts, pull the wheel back until the chain is taut.",
    )
    images = [_png(image_side, g) for g in range((n + group - 1) // group)]
    return [
        JudgeInput(
            id=f"bench-{i}",
            question=f"Question {i}: what should I do here?",
            response=responses[i % 2],
            image=images[i // group],
        )
        for i in range(n)
    ]


def _server_stats(port: int, reset: bool = False) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/stats" + ("?reset=1" if reset else "")
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _async_arm(judge: OpenAIJudge, inputs: list[JudgeInput]) -> int:
    """The judge as the reward loop runs it; its failures."""

    async def go() -> int:
        async with judge:
            return sum(v.failed for v in await judge.judge(inputs))

    return asyncio.run(go())


def _anchor_arm(judge: OpenAIJudge, inputs: list[JudgeInput], concurrency: int) -> int:
    """C threads, one `requests` session each, the judge's bodies and parsing; its failures."""
    url = f"{judge.client.base_url}/chat/completions"
    headers = judge.client.headers()
    local = threading.local()
    sessions: list[requests.Session] = []
    lock = threading.Lock()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            with lock:
                sessions.append(local.session)
        return local.session

    def one(item: JudgeInput) -> bool:
        try:
            resp = session().post(url, data=judge._payload(item), headers=headers, timeout=60)
            if resp.status_code != 200:
                return False
            judge._verdict(json.loads(resp.content)["choices"][0]["message"]["content"])
            return True
        except (requests.RequestException, ValueError, LookupError, TypeError, ReplyError):
            return False

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="anchor") as pool:
            return sum(not ok for ok in pool.map(one, inputs))
    finally:
        for s in sessions:
            s.close()


def _measure(
    port: int, arm: Callable[[], int], n: int, concurrency: int, latency_ms: float
) -> dict[str, Any]:
    IMAGE_CACHE.clear()  # each arm pays for its own encodings
    _server_stats(port, reset=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    failures = arm()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    ideal = concurrency / (latency_ms / 1000)
    return {
        "ratio": round(n / wall / ideal, 3),
        "throughput_rps": round(n / wall, 1),
        "cpu_ms_per_request": round(1000 * cpu / n, 3),
        "peak_inflight": _server_stats(port)["concurrent_max"],
        "failures": failures,
        "wall_s": round(wall, 3),
    }


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("ratio", "throughput_rps", "cpu_ms_per_request", "peak_inflight")
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in rounds), 3) for k in keys}
    out["failures"] = sum(r["failures"] for r in rounds)
    out["rounds"] = rounds
    return out


def run(
    latency_ms: float,
    concurrencies: list[int],
    ns: dict[int, int],
    rounds: int = 2,
    mode: str = "default",
    group: int = 4,
    image_side: int = 64,
) -> dict[str, Any]:
    port = _free_port()
    cmd = [sys.executable, str(SERVER_SCRIPT), "--port", str(port), "--latency-ms", str(latency_ms)]
    proc = subprocess.Popen([*cmd, "--mode", mode], stdout=subprocess.DEVNULL)
    rubric = rubric_from_config(load_reward_config().rubric)
    figures: dict[str, Any] = {"latency_ms": latency_ms, "group": group, "image_side": image_side}
    try:
        _wait_for_port(port, proc)
        for c in concurrencies:
            n = ns[c]
            inputs = synthetic_inputs(n, image_side, group)
            judge = OpenAIJudge(rubric, f"http://127.0.0.1:{port}/v1", "fake-judge", max_concurrency=c)
            arms: dict[str, list[dict[str, Any]]] = {"async": [], "anchor": []}
            async_arm = functools.partial(_async_arm, judge, inputs)
            anchor_arm = functools.partial(_anchor_arm, judge, inputs, c)
            for _ in range(rounds):
                arms["async"].append(_measure(port, async_arm, n, c, latency_ms))
                arms["anchor"].append(_measure(port, anchor_arm, n, c, latency_ms))
            async_, anchor = _summary(arms["async"]), _summary(arms["anchor"])
            figures[f"c{c}"] = {
                "concurrency": c,
                "n": n,
                "ideal_rps": round(c / (latency_ms / 1000), 1),
                "async": async_,
                "anchor": anchor,
                "async_over_anchor": round(async_["ratio"] / anchor["ratio"], 3),
            }
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return figures


def headline(figures: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, fig in figures.items():
        if not (key.startswith("c") and isinstance(fig, dict)):
            continue
        c, a, t = fig["concurrency"], fig["async"], fig["anchor"]
        bound = RATIO_TARGETS.get(c, RATIO_TARGET)
        rows += [
            (
                f"C={c} N={fig['n']} async / ideal ({fig['ideal_rps']:g}/s)",
                a["ratio"],
                target(a["ratio"], ">=", bound) + " (idle)",
            ),
            (f"C={c} anchor (thread pool) / ideal", t["ratio"], ""),
            (
                f"C={c} async / anchor",
                fig["async_over_anchor"],
                target(fig["async_over_anchor"], ">=", ANCHOR_TARGET),
            ),
            (
                f"C={c} async CPU per request (ms)",
                a["cpu_ms_per_request"],
                target(a["cpu_ms_per_request"], "<", CPU_TARGET_MS, " ms"),
            ),
            (f"C={c} anchor CPU per request (ms)", t["cpu_ms_per_request"], ""),
            (
                f"C={c} peak in flight async / anchor",
                f"{a['peak_inflight']:g} / {t['peak_inflight']:g}",
                f"of {c}",
            ),
            (
                f"C={c} failed judgements async + anchor",
                a["failures"] + t["failures"],
                target(a["failures"] + t["failures"], "==", 0),
            ),
        ]
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.judge_client", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", default="64,256", help="comma-separated (default 64,256)")
    parser.add_argument("--n", type=int, help="requests per arm at every concurrency (default: see above)")
    parser.add_argument(
        "--rounds", type=int, help="alternations of the two clients (default 3; 2 with --quick)"
    )
    parser.add_argument("--group", type=int, default=4, help="inputs sharing one image (default 4)")
    parser.add_argument("--image-side", type=int, default=64, help="side of the square PNGs (default 64)")
    parser.add_argument("--mode", choices=("default", "obedient"), default="default")
    parser.add_argument("--quick", action="store_true", help="fewer requests (unless --n is given)")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    sizes, per_c = (N_QUICK, 8) if args.quick else (N_DEFAULT, 16)
    ns = {c: args.n or sizes.get(c, per_c * c) for c in concurrencies}
    rounds = args.rounds or (2 if args.quick else 3)
    figures = run(args.latency_ms, concurrencies, ns, rounds, args.mode, args.group, args.image_side)
    figures["quick"] = bool(args.quick)
    return emit("judge_client", figures, headline(figures))


if __name__ == "__main__":
    main()
