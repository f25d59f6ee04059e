"""Score trajectories from the command line.

    python -m rewards score --judge {rule,openai,hf} [judge options] --input IN.jsonl --output OUT.jsonl

Each input line: `id`, `question`, `image` (a file path), `response`, and when known `safety_label`,
`category`, `image_objects`. Each output line: the input plus `score`, `criteria`, `penalties`, `flags`
and `judge_error` (null, or why the judge failed; a failed sample's `score` follows the fault policy:
null when excluded, the neutral score otherwise). Exit codes: 0 done; 1 bad input (the line is named);
3 the failures of a chunk passed `faults.max_failure_fraction` (the endpoint and last error are named).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

from .faults import JudgeFailureError
from .judge import JudgeInput
from .rubric import load_reward_config
from .scorer import RewardScorer

CHUNK = 256


class InputError(ValueError):
    pass


def read_inputs(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: not JSON ({err.msg})") from err
            missing = [k for k in ("id", "question", "image", "response") if not isinstance(row.get(k), str)]
            if missing:
                raise InputError(f"{path}:{number}: missing or non-string field(s) {', '.join(missing)}")
            yield number, row


def to_judge_input(row: dict, base: Path, where: str):
    image_path = Path(row["image"])
    if not image_path.is_absolute():
        image_path = base / image_path
    try:
        image = image_path.read_bytes()
    except OSError as err:
        raise InputError(f"{where}: cannot read image {image_path}: {err.strerror}") from err
    return JudgeInput.from_row(row, row["response"], image)


def build_config(args: argparse.Namespace):
    overrides = [f"judge.kind={args.judge}", *args.override]
    options = {
        "judge.openai.base_url": args.base_url,
        "judge.openai.model": args.model if args.judge == "openai" else None,
        "judge.openai.api_key_env": args.api_key_env,
        "judge.openai.max_concurrency": args.concurrency,
        "judge.openai.timeout_s": args.timeout,
        "judge.hf.model": args.model if args.judge == "hf" else None,
        "judge.hf.device": args.device,
        "faults.on_failure": args.on_failure,
    }
    overrides += [f"{k}={v}" for k, v in options.items() if v is not None]
    return (
        load_reward_config(args.config, overrides) if args.config else load_reward_config(overrides=overrides)
    )


def score_file(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        rows = list(read_inputs(args.input))
        inputs = [to_judge_input(row, args.input.parent, f"{args.input}:{n}") for n, row in rows]
    except (InputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    scorer = RewardScorer.from_config(build_config(args))
    failed = 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with (
        args.output.open("w", encoding="utf-8") as out,
        tqdm(
            total=len(inputs),
            desc="scoring",
            unit="sample",
            disable=not sys.stderr.isatty() and len(inputs) < 1000,
        ) as bar,
    ):
        for start in range(0, len(inputs), CHUNK):
            chunk = slice(start, start + CHUNK)
            samples = scorer.score_sync(inputs[chunk])
            for (_, row), sample in zip(rows[chunk], samples, strict=True):
                record = {
                    **row,
                    "score": None if math.isnan(sample.score) else sample.score,
                    "criteria": sample.criteria,
                    "penalties": sample.penalties,
                    "flags": sample.flags,
                    "judge_error": sample.judge_error,
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            failed += sum(s.failed for s in samples)
            bar.update(len(samples))
            try:
                scorer.check_batch(samples)
            except JudgeFailureError as err:
                print(f"error: {err}", file=sys.stderr)
                return 3
    print(f"scored {len(inputs)} samples with {scorer.name}: {failed} judge failures; wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rewards", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="score a jsonl file of trajectories")
    p.add_argument("--judge", choices=("rule", "openai", "hf"), default="rule")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--config", type=Path, help="a reward config (default: conf/saferl/reward/default.yaml)")
    p.add_argument("--base-url", help="openai: the chat-completions base URL, e.g. http://host:8000/v1")
    p.add_argument("--model", help="openai: the served model name; hf: a local checkpoint directory")
    p.add_argument("--api-key-env", help="openai: the NAME of the environment variable holding the key")
    p.add_argument("--concurrency", type=int, help="openai: requests in flight")
    p.add_argument("--timeout", type=float, help="openai: seconds per request")
    p.add_argument("--device", help="hf: cuda or cpu")
    p.add_argument("--on-failure", choices=("exclude", "neutral"))
    p.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="any reward config key"
    )
    args = parser.parse_args(argv)
    return score_file(args)


if __name__ == "__main__":
    sys.exit(main())
