"""`python -m saferl.eval +exp=NAME eval.checkpoints=[...] eval.benchmarks=[...] eval.output_dir=DIR`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from saferl.eval.run import run_eval
from saferl.preflight import refusing_bad_input
from saferl.resources import CONF_DIR, register_resolvers

register_resolvers()  # `${saferl_repo:}` in the experiment files


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base=None)
def main(cfg: DictConfig) -> None:
    with refusing_bad_input():
        run_eval(cfg)


if __name__ == "__main__":
    main()
