"""The training experiments (`conf/exp/*.yaml`) and their composed configs, for tools outside the trainer.

QI curation's judge and the warm start's `--measure` must use the config of the run they serve, not the
repository's default files: a QI box drawn with another rubric, or a step count measured on other
prompts, says nothing about that run. They compose it here exactly as `python -m saferl.train +exp=NAME`
does (`conf/train.yaml`, resolvers registered), so "the run's config" has one meaning.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from saferl.resources import CONF_DIR, register_resolvers

TRAIN_CONFIG = "train"  # conf/train.yaml: the trainer's primary config


def experiments() -> list[str]:
    """The training experiments, by the name `+exp=` takes."""
    return sorted(path.stem for path in (CONF_DIR / "exp").glob("*.yaml"))


def compose_experiment(exp: str, overrides: Sequence[str] = ()) -> DictConfig:
    """`conf/train.yaml` with `+exp=<exp>` and Hydra `overrides`, as the trainer composes it (unresolved:
    interpolations read the user's environment when a node is resolved, as in the trainer)."""
    valid = experiments()
    if exp not in valid:
        raise ValueError(f"unknown experiment {exp!r}; valid experiments: {', '.join(valid)}")
    register_resolvers()  # `${saferl_repo:}` in the experiment files
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose(TRAIN_CONFIG, overrides=[f"+exp={exp}", *overrides])
