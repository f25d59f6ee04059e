"""Where the files saferl ships are: the Hydra configs, the policies and the QI-Safe-10K files.

`conf/` holds Hydra's config groups only (the apps' primary configs, `exp/`, and the `saferl/*` groups,
named so they cannot shadow verl's `data`, `reward` or `rollout`); data lives under `data/`: the PST
policies (`data/policies/`), the synthetic sample and its content, the source-category map and the
curation recipe (`data/QI-Safe-10K/`). In a checkout (and an editable install) they are the
repository's own files. A built wheel carries copies under `saferl/_shipped/`, laid out as the
repository is (setup.py's build step), so a `pip install .` in a cluster image or on a Ray worker finds
them with no checkout. Every module reads these paths from here, never from `__file__` arithmetic.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import OmegaConf

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent
SHIPPED = "_shipped"  # the wheel's copy of the repository's files (setup.py: SHIPPED_FILES)


def _root() -> Path:
    shipped = _PACKAGE / SHIPPED
    if (shipped / "conf").is_dir():
        return shipped
    return _CHECKOUT


ROOT = _root()  # the checkout, or the wheel's copy: `${saferl_repo:}` in the experiment files
CONF_DIR = ROOT / "conf"
DATA_DIR = ROOT / "data"
SAMPLE_DIR = DATA_DIR / "QI-Safe-10K" / "sample"


def conf_file(*parts: str) -> Path:
    """A file under `conf/`, e.g. `conf_file("saferl", "reward", "default.yaml")`."""
    return CONF_DIR.joinpath(*parts)


def data_file(*parts: str) -> Path:
    """A file under `data/`, e.g. `data_file("policies", "pst20.yaml")`."""
    return DATA_DIR.joinpath(*parts)


def launch_log_dir(run_dir: str, dry_run: bool) -> str:
    """Where Hydra logs a launch (`hydra.run.dir` in conf/train.yaml): `<run_dir>/hydra`, except for a dry
    run, which must leave nothing in a run directory it only checks: the system's temp folder."""
    if dry_run:
        return str(Path(tempfile.gettempdir()) / "saferl-dry-run" / "hydra")
    return f"{run_dir}/hydra"


def register_resolvers() -> None:
    """`${saferl_repo:}` in the experiment files: `ROOT`, so the shipped sample resolves from any cwd;
    `${saferl_launch_log:...}` in conf/train.yaml: `launch_log_dir`."""
    if not OmegaConf.has_resolver("saferl_repo"):
        OmegaConf.register_new_resolver("saferl_repo", lambda: str(ROOT))
    if not OmegaConf.has_resolver("saferl_launch_log"):
        OmegaConf.register_new_resolver("saferl_launch_log", launch_log_dir)
