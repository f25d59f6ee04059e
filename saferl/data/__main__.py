"""The QI-Safe-10K data tools.

python -m saferl.data validate PATH [--write-clean OUT]      check every row; exit 1 on any bad row
python -m saferl.data make-sample [--out DIR] [--seed N]      regenerate the shipped synthetic sample
python -m saferl.data to-verl SRC OUT_DIR [--drop-bad-rows]   validate, then convert to verl's RL parquet
python -m saferl.data curate --config FILE [key=value ...]    pool, decontaminate, QI-score, select
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saferl.resources import SAMPLE_DIR

from .curate import CurationError, load_config, run_curation
from .synthetic import write_sample
from .validate import DataError, ImageLimits, validate
from .verl_format import convert_dataset


def _validate(args: argparse.Namespace) -> int:
    limits = ImageLimits(min_side=args.min_side, max_side=args.max_side)
    try:
        report = validate(args.path, limits=limits, write_clean=args.write_clean, threads=args.threads)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    print(report.summary())
    if args.write_clean:
        print(f"clean rows and rejects (with reasons) written to {args.write_clean}")
    return 0 if report.ok else 1


def _make_sample(args: argparse.Namespace) -> int:
    counts = write_sample(args.out, seed=args.seed)
    print(
        f"wrote {sum(counts.values())} rows to {args.out} ({', '.join(f'{k}: {v}' for k, v in counts.items())})"
    )
    return 0


def _to_verl(args: argparse.Namespace) -> int:
    rejects = args.out_dir / "rejects" if args.drop_bad_rows else None
    try:
        counts = convert_dataset(args.src, args.out_dir, rejects_dir=rejects)
    except (DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote verl-format parquet to {args.out_dir}: {', '.join(f'{k}.parquet ({v} rows)' for k, v in counts.items())}"
    )
    return 0


def _curate(args: argparse.Namespace) -> int:
    import json

    try:
        manifest = run_curation(load_config(args.config, args.overrides))
    except CurationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(manifest["counts"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saferl.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check every row of a parquet file or directory")
    p.add_argument("path", type=Path)
    p.add_argument(
        "--write-clean", type=Path, metavar="OUT", help="write good rows and rejects (with reasons)"
    )
    p.add_argument("--min-side", type=int, default=28)
    p.add_argument("--max-side", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2, help="image-decoding threads")
    p.set_defaults(run=_validate)

    p = sub.add_parser("make-sample", help="regenerate the shipped synthetic sample")
    p.add_argument("--out", type=Path, default=SAMPLE_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_make_sample)

    p = sub.add_parser("to-verl", help="convert QI-Safe-10K parquet to verl's RL format, one file per split")
    p.add_argument("src", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--drop-bad-rows",
        action="store_true",
        help="convert the good rows only; the bad ones go to OUT_DIR/rejects with their reasons",
    )
    p.set_defaults(run=_to_verl)

    p = sub.add_parser("curate", help="run the curation pipeline")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    p.set_defaults(run=_curate)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
