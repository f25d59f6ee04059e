"""The stages a run goes through before GRPO (`saferl.stages`): the policy GRPO starts from.

`python -m saferl.train` runs them before verl's trainer; `python -m saferl.srpo` runs the ones before
SRPO to find its starting policy. Both take them from here, so a stage means the same in either.

The stages' modules (the warm start, SRPO) import verl, so they are imported inside the functions that
run them: `saferl.train` must set the platform's environment before verl is first imported
(`saferl.launch.apply_platform_env`), and it imports this module before that.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from saferl.data.verl_format import convert_dataset
from saferl.launch import use_tiny_model
from saferl.preflight import check_no_secrets

STAGES = ("warm_start", "srpo", "grpo")  # saferl.stages: the order a run goes through them

logger = logging.getLogger("saferl.train")


def absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def run_stages(cfg: DictConfig) -> list[str]:
    """`saferl.stages`, checked: known stages, each once, in `STAGES` order."""
    stages = [str(s) for s in cfg.saferl.stages]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages or stages != sorted(set(stages), key=STAGES.index):
        raise ValueError(
            f"saferl.stages={stages}: name one or more of {list(STAGES)}, each once, in that order"
            + (f" ({unknown} unknown)" if unknown else "")
        )
    return stages


def prepare_policy(cfg: DictConfig, run_dir: Path, through: str = "srpo") -> Path | None:
    """The policy GRPO starts from, and its data: the tiny model's path when asked for, the verl-format
    copy of `saferl.data.dir` under `run_dir/data` (returned; None without one), then each stage of
    `saferl.stages` before GRPO up to `through`, each setting `actor_rollout_ref.model.path` to its output.
    """
    stages = run_stages(cfg)
    use_tiny_model(cfg)
    if cfg.actor_rollout_ref.model.path is None:
        raise ValueError("actor_rollout_ref.model.path is not set (or set saferl.tiny_model=bpe)")
    converted = None
    if cfg.saferl.data.dir:
        source = Path(cfg.saferl.data.dir)
        if not source.is_dir():
            raise FileNotFoundError(f"saferl.data.dir={source}: no such directory")
        out = run_dir / "data"
        rejects = out / "rejects" if cfg.saferl.data.drop_bad_rows else None
        counts = convert_dataset(source, out, val_agent_loop=cfg.saferl.val_agent_loop, rejects_dir=rejects)
        missing = [split for split in ("train", "val") if split not in counts]
        if missing:
            raise FileNotFoundError(f"saferl.data.dir={source}: no rows of split {' or '.join(missing)}")
        logger.info("data: %s -> %s (%s)", source, out, counts)
        cfg.data.train_files = str(out / "train.parquet")
        cfg.data.val_files = str(out / "val.parquet")
        converted = out
    if "warm_start" in stages:
        warm_start_stage(cfg, run_dir, converted)
    if "srpo" in stages and STAGES.index(through) >= STAGES.index("srpo"):
        srpo_stage(cfg)
    return converted


def warm_start_files(cfg: DictConfig, converted: Path | None) -> str:
    """What the warm start imitates: `saferl.warm_start.split` of the run's data. `train` is RL's own
    train file; any other split (the sample's `warm_start`: requests RL never asks) is read from the
    converted `saferl.data.dir`."""
    split = str(cfg.saferl.warm_start.split)
    if split == "train":
        return str(cfg.data.train_files)
    if converted is None:
        raise ValueError(
            f"saferl.warm_start.split={split}: only saferl.data.dir (a QI-Safe-10K directory) has splits "
            "other than train; with data.train_files given directly, set saferl.warm_start.split=train"
        )
    path = converted / f"{split}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"saferl.warm_start.split={split}: saferl.data.dir={cfg.saferl.data.dir} has no rows of split {split}"
        )
    return str(path)


def warm_start_stage(cfg: DictConfig, run_dir: Path, converted: Path | None = None) -> None:
    """PST's policy-guided SFT (the `warm_start` stage); the next stage starts from its output.

    It runs in this process on one device. On GPU nodes that is refused rather than run on the CPU or
    skipped: a multi-GPU SFT belongs to verl's own SFT trainer, which saferl does not drive yet."""
    ws = cfg.saferl.warm_start
    if cfg.saferl.platform != "cpu":
        raise ValueError(
            "saferl.stages has warm_start on a GPU experiment: the warm start runs in the driver on one "
            "device, which is not how a 3B/7B model is fine-tuned, and saferl does not drive verl's "
            "multi-GPU SFT trainer (verl.trainer.sft_trainer) yet. Warm-start separately "
            "(python -m saferl.warm_start --model ... --train ... --out DIR) and point "
            "actor_rollout_ref.model.path at DIR, or leave warm_start out of saferl.stages."
        )
    from saferl.warm_start import warm_start  # imports verl: see the module's docstring

    base = str(cfg.actor_rollout_ref.model.path)
    files = warm_start_files(cfg, converted)
    out = warm_start(base, files, ws, run_dir / "warm_start", data_config=cfg.data)
    logger.info("warm start (PST SFT, %s steps): %s", ws.steps, out)
    cfg.actor_rollout_ref.model.path = str(out)


def srpo_stage(cfg: DictConfig) -> None:
    """PST's SRPO (the `srpo` stage): preference pairs from the current policy, then DPO; the next stage
    starts from its output. Like the warm start it runs in this process on one device, so GPU
    experiments are refused: there, TRL's DPOTrainer runs under accelerate (`accelerate launch -m
    saferl.srpo train +exp=NAME`, after `python -m saferl.srpo pairs +exp=NAME`)."""
    if cfg.saferl.platform != "cpu":
        raise ValueError(
            "saferl.stages has srpo on a GPU experiment: the stage runs in the driver on one device. Run it "
            "separately (python -m saferl.srpo pairs +exp=NAME, then accelerate launch -m saferl.srpo train "
            "+exp=NAME) and point actor_rollout_ref.model.path at its model/, or leave srpo out of "
            "saferl.stages."
        )
    from saferl.srpo.stage import build_pairs, train  # imports verl: see the module's docstring

    if cfg.saferl.srpo.policy:
        raise ValueError(
            f"saferl.srpo.policy={cfg.saferl.srpo.policy}: as a stage of saferl.stages, SRPO starts from the "
            "policy the stages before it leave (actor_rollout_ref.model.path); set one or the other"
        )
    policy = str(cfg.actor_rollout_ref.model.path)
    build_pairs(cfg, [policy])
    out = train(cfg, policy)
    logger.info("SRPO (PST preference stage): %s", out)
    cfg.actor_rollout_ref.model.path = str(out)


def run_directory(cfg: DictConfig) -> Path:
    """After refusing a config that holds a secret: `trainer.default_local_dir`, made absolute in the
    config and created (what the stages before GRPO and `python -m saferl.srpo` write under)."""
    check_no_secrets(cfg)
    with open_dict(cfg):
        cfg.trainer.default_local_dir = absolute(cfg.trainer.default_local_dir)
    run_dir = Path(cfg.trainer.default_local_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_policy_stages(cfg: DictConfig) -> Path:
    """A run whose stages stop before GRPO (e.g. warm start then SRPO): the stages, the resolved config
    in the run directory, and where the policy is."""
    run_dir = run_directory(cfg)
    prepare_policy(cfg, run_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    policy = Path(cfg.actor_rollout_ref.model.path)
    print(f"saferl: stages {list(cfg.saferl.stages)} done; the policy is {policy}", flush=True)
    return policy
