"""`python -m saferl.srpo pairs +exp=NAME [overrides]`, then `python -m saferl.srpo train +exp=NAME`.

`pairs` samples the policy SRPO starts from (`saferl.srpo.policy`, else the experiment's; or
`saferl.srpo.pairs.policies`) on a split of `saferl.data.dir`,
judges every answer and writes `saferl.srpo.pairs_file` with a manifest beside it; `train` runs DPO from the
experiment's policy on that file and writes `saferl.srpo.output_dir/model`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from saferl.config_schema import check_saferl_config
from saferl.preflight import check_no_secrets, refusing_bad_input
from saferl.resources import CONF_DIR, register_resolvers
from saferl.srpo.pairs import CONTRASTIVE
from saferl.srpo.stage import build_pairs, train
from saferl.stages import prepare_policy, run_directory

logger = logging.getLogger("saferl.srpo")

register_resolvers()  # `${saferl_repo:}` in the experiment files, before Hydra composes them


def starting_policy(cfg: DictConfig) -> str:
    """`saferl.srpo.policy`, or the experiment's policy after the stages before SRPO."""
    if cfg.saferl.srpo.policy:
        return str(cfg.saferl.srpo.policy)
    prepare_policy(cfg, run_directory(cfg), through="warm_start")
    return str(cfg.actor_rollout_ref.model.path)


def run_pairs(cfg: DictConfig) -> Path:
    """The pairs, sampled (for contrastive mining) from the policy SRPO starts from."""
    run_directory(cfg)
    policies = []
    if CONTRASTIVE in cfg.saferl.srpo.pairs.sources and not cfg.saferl.srpo.pairs.policies:
        policies = [starting_policy(cfg)]
    return build_pairs(cfg, policies)


def run_train(cfg: DictConfig) -> Path:
    """DPO from the policy SRPO starts from, on the pairs file."""
    run_directory(cfg)
    return train(cfg, starting_policy(cfg))


RUNNERS = {"pairs": run_pairs, "train": run_train}
_command: list[str] = []  # the subcommand, taken off argv before Hydra parses the overrides


@hydra.main(config_path=str(CONF_DIR), config_name="srpo", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    with refusing_bad_input():
        check_no_secrets(cfg)
        check_saferl_config(cfg)
        RUNNERS[_command[0]](cfg)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in RUNNERS:
        sys.exit(f"usage: python -m saferl.srpo {{{'|'.join(RUNNERS)}}} +exp=NAME [overrides]")
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _command[:] = [command]
    sys.argv = [f"{sys.argv[0]} {command}", *rest]
    _hydra_main()


if __name__ == "__main__":
    main()
