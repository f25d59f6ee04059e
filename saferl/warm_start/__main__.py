"""`python -m saferl.warm_start`: the stage on its own, or `--measure` (both under an experiment's config)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from saferl.experiments import compose_experiment
from saferl.launch import use_tiny_model
from saferl.resources import SAMPLE_DIR

from . import __doc__ as PACKAGE_DOC
from .measure import format_table, measure
from .stage import warm_start

DEFAULT_EXPERIMENT = "tiny"
NODE = "saferl.warm_start"  # the overrides' node: `steps=100` is `saferl.warm_start.steps=100`


def run_config(exp: str, overrides: list[str]) -> DictConfig:
    """The experiment's composed config, with `key=value` overrides of its `saferl.warm_start` node."""
    return compose_experiment(exp, [f"{NODE}.{override}" for override in overrides])


def main(argv: list[str] | None = None) -> int:
    prog = "python -m saferl.warm_start"
    parser = argparse.ArgumentParser(prog=prog, description=PACKAGE_DOC.split("\n\n")[0])
    parser.add_argument(
        "--exp",
        default=DEFAULT_EXPERIMENT,
        help="the experiment whose saferl.warm_start, data and reward config to use (default: tiny)",
    )
    parser.add_argument("--measure", action="store_true", help="print the step-count table on the sample")
    parser.add_argument("--steps", default="0,50,100,200,300,400", help="--measure: step counts to evaluate")
    parser.add_argument("--samples", type=int, default=2, help="--measure: samples per val prompt at T=1.0")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=512,
        help="--measure: response budget (the sample's references are 109-293 tiny-BPE tokens)",
    )
    parser.add_argument("--model", type=Path, help="base checkpoint (default: the experiment's policy)")
    parser.add_argument("--train", type=Path, help="train file (default: the shipped sample's train split)")
    parser.add_argument("--out", type=Path, help="output checkpoint directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help=f"{NODE} overrides, key=value (e.g. steps=100)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.out is None and not args.measure:
        parser.error("--out is required (or --measure)")
    run_cfg = run_config(args.exp, args.overrides)
    cfg = run_cfg.saferl.warm_start

    if args.measure:
        start = time.perf_counter()
        counts = [int(s) for s in args.steps.split(",") if s.strip()]
        rows = measure(
            counts,
            run_cfg,
            num_samples=args.samples,
            max_new_tokens=args.max_new_tokens,
            progress=not args.quiet,
        )
        print(format_table(rows))
        print(
            f"(+exp={args.exp}; trained on the sample's {cfg.split} split, measured on its val split; t1.0: "
            f"{args.samples} samples per prompt; max_new_tokens={args.max_new_tokens}; lr={cfg.lr}, "
            f"batch_size={cfg.batch_size}, seed={cfg.seed}; {time.perf_counter() - start:.0f} s)"
        )
        return 0

    use_tiny_model(run_cfg)  # the tiny experiments' policy: built on first use, cached
    model = args.model or run_cfg.actor_rollout_ref.model.path
    train = args.train or SAMPLE_DIR / f"{cfg.split}.parquet"
    print(warm_start(model, train, cfg, args.out, progress=not args.quiet, data_config=run_cfg.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
