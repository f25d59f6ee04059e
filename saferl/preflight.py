"""`saferl.dry_run=true`: check a training config before it costs GPU hours, then exit.

What fails a multi-node job late, found early: verl's own `validate_config` (batch arithmetic against
GPUs), a model or data path that is not there, a judge endpoint that does not answer, parts not
registered into verl, an engine/rollout combination verl cannot run, a secret about to be written into
the config that verl sends to W&B. Each check reports ok / warn / FAIL with the reason; warnings (no GPU
or vLLM on this machine) do not fail the dry run, so it is useful on a laptop before submitting.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saferl.config_schema import ConfigError
from saferl.data.synthetic import count_synthetic
from saferl.data.validate import DataError
from saferl.verl_internals import registered_agent_loops, verl_defaults_file

OK, WARN, FAIL = "ok", "warn", "FAIL"
# gpu: verl's own platforms and vLLM; cpu: saferl's CPU platform and HF rollout (conf/saferl/platform/cpu.yaml).
PLATFORMS = ("cpu", "gpu")
# Config keys that would hold a secret's value (the *_env keys hold a variable's NAME, which is fine).
_SECRET_KEY = re.compile(r"(api_?key|secret|password|token)$", re.IGNORECASE)
# Variables whose values must never appear anywhere in the config: the well-known ones and saferl's own
# defaults (checked even when a `*_env` key names another variable), plus whatever a `*_env` key names.
SECRET_ENV_VARS = (
    "WANDB_API_KEY",
    "OPENAI_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "SAFERL_JUDGE_API_KEY",
    "SAFERL_GENERATOR_API_KEY",
)


# What an environment variable's name looks like where a `*_env` key expects one. A key typed there
# instead (lower case, `-`, or a run of digits as random keys have) is refused, not written to W&B.
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
_ENV_NAME_MAX_DIGITS = 7


class SecretInConfigError(ValueError):
    """A secret's value is in the training config, which verl logs and sends to W&B whole. The message
    names the config path, never the value."""


@contextmanager
def refusing_bad_input() -> Iterator[None]:
    """Around a command's Hydra task: a refused secret, refused data or a bad saferl key exits with its
    message alone.
    Raised through Hydra instead, it would print the command's overrides (which may hold the secret)
    and a traceback that buries the validator's report."""
    try:
        yield
    except (SecretInConfigError, DataError, ConfigError) as err:
        sys.exit(f"saferl: refused: {err}")


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{path}[{i}]")
    else:
        yield path, node


def _env_names(leaves: list[tuple[str, Any]]) -> dict[str, str]:
    """config path -> the variable named by each `*_env` key; a value that is not a variable's name is
    refused (it may be the key itself)."""
    names = {}
    for path, value in leaves:
        if not path.rsplit(".", 1)[-1].endswith("_env") or not isinstance(value, str):
            continue
        if not _ENV_NAME.fullmatch(value) or sum(c.isdigit() for c in value) > _ENV_NAME_MAX_DIGITS:
            raise SecretInConfigError(
                f"{path} must name an environment variable (e.g. SAFERL_JUDGE_API_KEY: upper case, digits "
                "and _), and its value does not look like one; put the key in the environment under a name"
            )
        names[path] = value
    return names


def check_no_secrets(cfg: DictConfig) -> None:
    """Raise if a secret would be written into the config: a key named like one with a value, a `*_env`
    key holding something other than a variable's name, or the value of a secret variable anywhere (the
    well-known ones and every variable a `*_env` key names). Secrets are read from the environment only."""
    leaves = list(_leaves(OmegaConf.to_container(cfg, resolve=False)))
    names = [*SECRET_ENV_VARS, *_env_names(leaves).values()]
    secrets = {name: os.environ[name] for name in names if len(os.environ.get(name, "")) >= 8}
    for path, value in leaves:
        leaf = path.rsplit(".", 1)[-1]
        if _SECRET_KEY.search(leaf) and isinstance(value, str) and value and not leaf.endswith("_env"):
            raise SecretInConfigError(
                f"{path} holds a value; secrets come from the environment (see *_env keys), never the config"
            )
        if isinstance(value, str):
            for name, secret in secrets.items():
                if secret in value:
                    raise SecretInConfigError(f"{path} contains the value of ${name}; pass it by environment")


@dataclass
class Report:
    checks: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append((name, status, detail))

    @property
    def ok(self) -> bool:
        return all(status != FAIL for _, status, _ in self.checks)

    def render(self) -> str:
        width = max(len(name) for name, _, _ in self.checks)
        lines = [f"  [{status:>4}] {name:<{width}}  {detail}" for name, status, detail in self.checks]
        verdict = "dry run passed" if self.ok else "dry run FAILED"
        return "\n".join(["saferl dry run:", *lines, verdict])


def _check(report: Report, name: str, fn) -> None:
    try:
        status, detail = fn()
    except Exception as err:  # a check that crashes is a failed check, with its reason
        status, detail = FAIL, f"{type(err).__name__}: {err}"
    report.add(name, status, detail)


def _validate_verl(cfg: DictConfig) -> tuple[str, str]:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    return OK, f"verl validate_config ({cfg.trainer.nnodes} x {cfg.trainer.n_gpus_per_node} GPUs)"


def _check_platform(cfg: DictConfig) -> tuple[str, str]:
    if cfg.saferl.platform not in PLATFORMS:
        return FAIL, f"saferl.platform={cfg.saferl.platform!r}: must be one of {PLATFORMS}"
    return OK, f"{cfg.saferl.platform}, rollout {cfg.actor_rollout_ref.rollout.name}"


def _check_model(cfg: DictConfig) -> tuple[str, str]:
    if cfg.saferl.tiny_model:
        return OK, f"tiny model ({cfg.saferl.tiny_model}) is built on first use"
    path = cfg.actor_rollout_ref.model.path
    if not path:
        return FAIL, "actor_rollout_ref.model.path is not set"
    local = Path(str(path)).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            return FAIL, f"{local}: no config.json"
        return OK, f"{local}"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(str(path), "config.json")
    if isinstance(cached, str):
        return OK, f"{path} (in the local Hugging Face cache)"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return FAIL, f"{path}: not a directory and not in the Hugging Face cache (HF_HUB_OFFLINE=1)"
    return WARN, f"{path}: not cached here; it will be downloaded from the hub at start"


def _type_problem(default: Any, value: Any) -> str | None:
    """Why `value` cannot stand where verl's default is `default` (bool, int or float); None if it can."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected an integer"
    if isinstance(default, float):
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "expected a number"
    return None


def _verl_type_problems(default: DictConfig, node: DictConfig, path: str) -> Iterator[str]:
    for key in default:
        skip = OmegaConf.is_interpolation(default, key) or OmegaConf.is_missing(default, key)
        if skip or key not in node or OmegaConf.is_missing(node, key):
            continue
        where = f"{path}{key}"
        if OmegaConf.is_interpolation(node, key):
            continue  # resolved later, from the user's environment: verl checks what it becomes
        ref, value = default[key], node[key]
        if isinstance(ref, DictConfig):
            if isinstance(value, DictConfig):
                yield from _verl_type_problems(ref, value, f"{where}.")
            continue
        if ref is None or value is None:
            continue
        problem = _type_problem(ref, value)
        if problem:
            yield f"{where}: {problem} (verl's default: {ref!r}), got {value!r}"


def check_verl_types(cfg: DictConfig) -> None:
    """Refuse a verl key whose value has the wrong type (`actor_rollout_ref.rollout.n=abc`), naming the key,
    before anything is written: verl reads its config untyped and would fail far from the cause. The types
    are verl's own defaults' (`saferl.verl_internals.verl_defaults_file`)."""
    defaults = OmegaConf.load(verl_defaults_file())
    problems = list(_verl_type_problems(defaults, cfg, ""))
    if problems:
        raise ConfigError("; ".join(problems))


def _listed_data_files(cfg: DictConfig) -> list[tuple[str, str]]:
    """(key, file as written) for each file of `data.train_files` and `data.val_files` (one or a list)."""
    listed = []
    for key in ("train_files", "val_files"):
        value = cfg.data[key]
        listed += [(key, str(f)) for f in ([value] if isinstance(value, str) else list(value or []))]
    return listed


def data_files(cfg: DictConfig) -> list[Path]:
    """The parquet files the run will read: under `saferl.data.dir`, else `data.{train,val}_files`."""
    if cfg.saferl.data.dir:
        source = Path(str(cfg.saferl.data.dir)).expanduser()
        return sorted(source.rglob("*.parquet")) if source.is_dir() else []
    paths = [Path(f).expanduser() for _, f in _listed_data_files(cfg)]
    return [p for p in paths if p.is_file()]


def synthetic_data(cfg: DictConfig) -> str | None:
    """What is wrong when a GPU experiment would train on the shipped synthetic sample without saying so
    (`saferl.data.allow_synthetic`); None when nothing is. The dry run fails on it, a start warns."""
    if cfg.saferl.platform != "gpu" or cfg.saferl.data.allow_synthetic:
        return None
    synthetic, total = count_synthetic(data_files(cfg))
    if not synthetic:
        return None
    where = f"saferl.data.dir={cfg.saferl.data.dir}" if cfg.saferl.data.dir else "data.train_files/val_files"
    return (
        f"{synthetic} of {total} rows in {where} are the shipped synthetic sample (source 'synthetic'): a "
        "GPU run would train on a 360-row CPU demo. Point SAFERL_DATA_DIR (saferl.data.dir) at your "
        "QI-Safe-10K directory, or set saferl.data.allow_synthetic=true if you mean it"
    )


def _check_data(cfg: DictConfig) -> tuple[str, str]:
    problem = synthetic_data(cfg)
    if problem:
        return FAIL, problem
    if cfg.saferl.data.dir:
        source = Path(str(cfg.saferl.data.dir))
        if not source.is_dir():
            return FAIL, f"saferl.data.dir={source}: no such directory"
        files = sorted(p.name for p in source.rglob("*.parquet"))
        if not files:
            return FAIL, f"saferl.data.dir={source}: no parquet files"
        return OK, f"{source} ({len(files)} parquet files; converted at start)"
    missing = [f"data.{key}: {f}" for key, f in _listed_data_files(cfg) if not Path(f).expanduser().is_file()]
    return (FAIL, "; ".join(missing)) if missing else (OK, "data.train_files and data.val_files exist")


def _check_judge(cfg: DictConfig) -> tuple[str, str]:
    judge = cfg.saferl.reward.judge
    if judge.kind == "rule":
        return OK, "rule judge (offline)"
    if judge.kind == "hf":
        path = Path(str(judge.hf.model))
        return (OK, f"hf judge {path}") if (path / "config.json").is_file() else (FAIL, f"{path}: no model")
    import httpx

    url = str(judge.openai.base_url).rstrip("/") + "/models"
    headers = {}
    key = os.environ.get(str(judge.openai.api_key_env or ""), "")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        response = httpx.get(url, headers=headers, timeout=5.0)
    except httpx.HTTPError as err:
        return FAIL, f"judge endpoint {url} unreachable: {type(err).__name__}: {err}"
    if response.status_code != 200:
        return FAIL, f"judge endpoint {url} answered HTTP {response.status_code}"
    served = [m.get("id") for m in response.json().get("data", [])]
    if served and str(judge.openai.model) not in served:
        return FAIL, f"judge endpoint {url} serves {served}, not {judge.openai.model}"
    return OK, f"judge endpoint {url} serves {judge.openai.model}"


def _check_parts(cfg: DictConfig) -> tuple[str, str]:
    import verl  # noqa: F401  (loads the saferl plugin)
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER as REWARD_MANAGERS
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    wanted = {
        "agent loop": (cfg.actor_rollout_ref.rollout.agent.default_agent_loop, registered_agent_loops()),
        "reward manager": (cfg.reward.reward_manager.name, REWARD_MANAGERS),
        "advantage estimator": (cfg.algorithm.adv_estimator, ADV_ESTIMATOR_REGISTRY),
    }
    missing = [f"{what} {name!r}" for what, (name, registry) in wanted.items() if name not in registry]
    if missing:
        return FAIL, "not registered into verl: " + ", ".join(missing)
    return OK, ", ".join(f"{what} {name}" for what, (name, _) in wanted.items())


def _check_rollout_mode(cfg: DictConfig) -> tuple[str, str]:
    # Here, not at the top: the loop imports verl, and saferl.train imports this module before it sets
    # the platform's environment (verl picks its platform once, on first import).
    from rollout.reflect_loop import check_rollout_mode

    check_rollout_mode(cfg.saferl.rollout)  # raises with the reason, which _check reports as FAIL
    return OK, f"saferl.rollout.mode={cfg.saferl.rollout.mode}"


def _check_hardware(cfg: DictConfig) -> tuple[str, str]:
    if cfg.saferl.platform == "gpu":
        import importlib.util

        import torch

        problems = []
        if not torch.cuda.is_available():
            problems.append("no CUDA device here")
        if importlib.util.find_spec("vllm") is None:
            problems.append("vllm not installed (pip install -e '.[gpu]')")
        if problems:
            return WARN, "; ".join(problems) + ": fine for a dry run, needed on the GPU nodes"
        return OK, f"{torch.cuda.device_count()} CUDA device(s), vllm installed"
    return OK, "verl's trainer on this machine's CPU (saferl.cpu_platform), HF rollout"


def _check_output(cfg: DictConfig) -> tuple[str, str]:
    path = Path(str(cfg.trainer.default_local_dir))
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        return FAIL, f"{path}: {parent} is not writable"
    return OK, f"{path}"


def preflight(cfg: DictConfig) -> Report:
    """Run every check and print the report; `report.ok` is False when any check FAILed."""
    report = Report()
    _check(report, "secrets", lambda: (check_no_secrets(cfg), (OK, "none in the config"))[1])
    _check(report, "platform", lambda: _check_platform(cfg))
    _check(report, "config", lambda: _validate_verl(cfg))
    _check(report, "parts", lambda: _check_parts(cfg))
    _check(report, "rollout", lambda: _check_rollout_mode(cfg))
    _check(report, "model", lambda: _check_model(cfg))
    _check(report, "data", lambda: _check_data(cfg))
    _check(report, "judge", lambda: _check_judge(cfg))
    _check(report, "hardware", lambda: _check_hardware(cfg))
    _check(report, "output", lambda: _check_output(cfg))
    print(report.render(), flush=True)
    return report
