"""`python -m benchmarks [--only NAME[,NAME]] [--quick] [-v]`: the benchmarks, one table, one JSON line.

Runs every benchmark but the long ones (a full training run each: listed with their commands), or those
`--only` names (long ones included), each as `python -m benchmarks.<name>` in its own process, so one
that fails shows as an error row (with the end of its stderr) and does not stop the others. `--quick` is
passed to each benchmark that has a quick mode. Prints one table (benchmark, figure, value, target) and,
as its last line, one JSON object: `{"quick", "figures": {name: figures}, "wall_s": {name: seconds},
"errors": {name: message}, "not_run": {name: command}}`. Exit code 1 when a benchmark failed to run (a
missed target is a MISSED cell, not a failure), 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import BENCHMARKS, HEADER, Benchmark, table

REPO = Path(__file__).resolve().parents[1]
STDERR_TAIL = 30  # lines of a failed benchmark's stderr shown


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(map(repr, unknown)) or repr(value)}; valid: {', '.join(BENCHMARKS)}"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    listing = "\n".join(f"  {b.name:<14} {b.measures}" for b in BENCHMARKS.values())
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the benchmarks (the quick ones unless --only names others): one table, one JSON line.",
        epilog=f"benchmarks:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        type=_names,
        action="append",
        metavar="NAME[,NAME]",
        help=f"run only these (repeatable; long ones included): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--quick", action="store_true", help="pass --quick to the benchmarks that have it")
    parser.add_argument("-v", "--verbose", action="store_true", help="stream each benchmark's stderr")
    return parser.parse_args(argv)


def command(bench: Benchmark, quick: bool) -> list[str]:
    return [sys.executable, "-m", f"benchmarks.{bench.name}", *(["--quick"] if quick and bench.quick else [])]


def run_one(bench: Benchmark, quick: bool, verbose: bool) -> tuple[dict[str, Any] | None, str | None, float]:
    """(figures, error, wall seconds) of one benchmark run in its own process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    proc = subprocess.Popen(
        command(bench, quick), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip("\n"))
            if verbose:
                sys.stderr.write(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    proc.wait()
    reader.join()
    wall = round(time.perf_counter() - start, 1)
    lines = stdout.strip().splitlines()
    figures = None
    try:
        parsed = json.loads(lines[-1]) if lines else None
        figures = parsed if isinstance(parsed, dict) else None
    except json.JSONDecodeError:
        pass
    error = None
    if proc.returncode != 0:
        last = next((line for line in reversed(tail) if line.strip()), "")
        error = f"exit {proc.returncode}" + (f": {last.strip()}" if last else "")
    elif figures is None:
        error = "its last line of output is not a JSON object"
    if error and not verbose and tail:
        print(f"--- {bench.name}: the end of its stderr ---", *tail, "---", sep="\n", file=sys.stderr)
    return figures, error, wall


def rows_of(bench: Benchmark, figures: dict[str, Any]) -> list[tuple[Any, ...]]:
    module = importlib.import_module(f"benchmarks.{bench.name}")
    return [(bench.name, *row) for row in module.headline(figures)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = list(dict.fromkeys(n for group in args.only for n in group)) if args.only else None
    plan = [b for b in BENCHMARKS.values() if (b.name in chosen if chosen else not b.long)]
    not_run = {
        b.name: f"python -m benchmarks.{b.name} {b.usage}".strip()
        for b in BENCHMARKS.values()
        if b not in plan
    }
    result: dict[str, Any] = {
        "quick": args.quick,
        "figures": {},
        "wall_s": {},
        "errors": {},
        "not_run": not_run,
    }
    rows: list[tuple[Any, ...]] = []
    for i, bench in enumerate(plan, 1):
        shown = " ".join(["python", *command(bench, args.quick)[1:]])
        print(f"benchmarks: [{i}/{len(plan)}] {shown} ...", file=sys.stderr, flush=True)
        figures, error, wall = run_one(bench, args.quick, args.verbose)
        result["wall_s"][bench.name] = wall
        if figures is not None:
            result["figures"][bench.name] = figures
            try:
                rows += rows_of(bench, figures)
            except Exception as exc:  # a headline that cannot read the figures is an error row, not a crash
                error = error or f"its table: {type(exc).__name__}: {exc}"
        if error:
            result["errors"][bench.name] = error
            rows.append((bench.name, "ERROR", error, ""))
        rows.append((bench.name, "wall (s)", wall, ""))
        status = f"FAILED ({error})" if error else "ok"
        print(
            f"benchmarks: [{i}/{len(plan)}] {bench.name}: {status} in {wall:g} s", file=sys.stderr, flush=True
        )
    print(table(rows, HEADER))
    if not_run:
        print("\nNot run here (long, or not chosen); run alone:")
        width = max(map(len, not_run.values()))
        for name, cmd in not_run.items():
            print(f"  {cmd:<{width}}  {BENCHMARKS[name].measures}")
    print(json.dumps(result), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
