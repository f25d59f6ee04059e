"""`python -m saferl.train +exp=NAME [overrides]`: the training entry point, a thin Hydra main.

There is one trainer: verl's own (`run_ppo` with `TaskRunnerV1`, i.e. `PPOTrainerSync`), for every
experiment. `+exp=tiny` runs it on CPU through saferl's verl plugins (the `cpu` platform and the `hf`
rollout backend, `conf/saferl/platform/cpu.yaml`); `+exp=qwen3b` on GPU nodes with vLLM. As in verl's recipes,
the config is verl's `ppo_trainer` extended in `conf/train.yaml`, saferl's keys live under `saferl.*`, and
saferl's parts are selected by config (`safe_reflect`, `saferl_safety`, `saferl_grpo`, `QISafeDataset`,
`SaferlReplayBuffer`).

What this driver does before handing over, and why it is here rather than in verl's task runner:

- sets the platform's environment (`saferl.env`) before verl is imported, and hands it to every Ray
  process, since verl picks its platform once per process;
- builds the tiny model when asked, converts the QI-Safe-10K data to verl's format, and runs the PST
  warm start as a stage before RL (`saferl.warm_start`);
- resolves the whole config here, where `${oc.env:...}` sees the user's environment and the
  `saferl_repo` resolver is registered, and writes it to the run directory;
- gives each launch its own metrics file (verl's file logger truncates the file it opens).

`saferl.dry_run=true` runs the preflight checks (`saferl.preflight`) and exits without training.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from saferl import resources
from saferl.launch import apply_platform_env, ray_env_vars, use_tiny_model

REPO_ROOT, CONF_DIR = resources.ROOT, resources.CONF_DIR  # the checkout, or the wheel's copy of it
# What verl's checkpoints write last (trainer_base.py `_save_checkpoint`): the step a resume starts from.
LATEST_CHECKPOINT = "latest_checkpointed_iteration.txt"
STAGES = ("warm_start", "srpo", "grpo")  # saferl.stages: the order a run goes through them

logger = logging.getLogger("saferl.train")

resources.register_resolvers()


def resume_step(cfg: DictConfig) -> int:
    """The step verl will resume from (0 for a fresh run), read as verl's `_load_checkpoint` finds it."""
    if cfg.trainer.resume_mode == "disable":
        return 0
    if cfg.trainer.resume_mode == "resume_path":
        return int(str(cfg.trainer.resume_from_path).rstrip("/").split("global_step_")[-1])
    marker = Path(cfg.trainer.default_local_dir) / LATEST_CHECKPOINT
    return int(marker.read_text().strip()) if marker.is_file() else 0


def _absolute(path: str | None) -> str | None:
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
        from saferl.data.verl_format import convert_dataset

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


def prepare(cfg: DictConfig) -> DictConfig:
    """Fill in what the config names but does not yet hold (the tiny model's path, the verl-format data,
    the warm-started policy), resolve it, write it to the run directory, and set the launch's metrics file."""
    from saferl.preflight import PLATFORMS, check_no_secrets

    check_no_secrets(cfg)
    if cfg.saferl.platform not in PLATFORMS:
        raise ValueError(f"saferl.platform={cfg.saferl.platform!r}: must be one of {PLATFORMS}")
    with open_dict(cfg):
        # verl's workers run in other processes (other working directories on other nodes).
        cfg.trainer.default_local_dir = _absolute(cfg.trainer.default_local_dir)
    run_dir = Path(cfg.trainer.default_local_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prepare_policy(cfg, run_dir)
    from rewards.judges import judge_address

    cfg.trainer.v1.sampler.sampler_kwargs.judge = judge_address(cfg.saferl.reward.judge)
    OmegaConf.resolve(cfg)
    latest = resume_step(cfg)
    step = latest
    if latest:
        from saferl.resume import resume_point, trim_after

        step = resume_point(run_dir, latest)
        if step != latest:  # killed between checkpoint `latest` and its log: redo that step
            cfg.trainer.resume_mode = "resume_path" if step else "disable"
            cfg.trainer.resume_from_path = str(run_dir / f"global_step_{step}") if step else None
        if trim_after(run_dir, step) and step:
            cfg.trainer.val_before_train = False  # the killed launch logged the validation at `step`
        if step:
            print(f"saferl: resuming from {run_dir / f'global_step_{step}'} at step {step}", flush=True)
    metrics = run_dir / "metrics" / f"from_step_{step}.jsonl"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        env_vars = ray_env_vars(cfg)
        env_vars.VERL_FILE_LOGGER_PATH = str(metrics)
        env_vars.WANDB_DIR = str(run_dir)
        env_vars.SAFERL_RUN_DIR = str(run_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    logger.info("resolved config: %s; metrics of this launch: %s", run_dir / "config.yaml", metrics)
    return cfg


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
    from saferl.warm_start import warm_start

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
    from saferl.srpo.stage import build_pairs, train

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


def run_verl(cfg: DictConfig) -> None:
    """verl's `main_ppo.main`, minus Hydra: auto device, `validate_config`, `run_ppo` with TaskRunnerV1."""
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    from saferl.ray_cluster import join_cluster

    auto_set_device(cfg)
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    join_cluster(cfg)  # a cluster started by scripts/slurm: verl's ray.init joins it
    print(
        f"saferl: verl {cfg.trainer.v1.trainer_mode} trainer (TaskRunnerV1), platform {cfg.saferl.platform}"
    )
    run_ppo(cfg, task_runner_class=TaskRunnerV1)


def run_directory(cfg: DictConfig) -> Path:
    """After refusing a config that holds a secret: `trainer.default_local_dir`, made absolute in the
    config and created (what the stages before GRPO and `python -m saferl.srpo` write under)."""
    from saferl.preflight import check_no_secrets

    check_no_secrets(cfg)
    with open_dict(cfg):
        cfg.trainer.default_local_dir = _absolute(cfg.trainer.default_local_dir)
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


def run(cfg: DictConfig) -> None:
    """Check the saferl keys, set the platform up, then dry-run or train with verl's trainer."""
    from saferl.config_schema import check_saferl_config
    from saferl.preflight import check_no_secrets

    check_no_secrets(cfg)  # first: a secret is refused as one, whatever else is wrong
    check_saferl_config(cfg)  # before anything is written
    apply_platform_env(cfg)
    if cfg.saferl.dry_run:
        from saferl.preflight import preflight

        sys.exit(0 if preflight(cfg).ok else 1)
    if "grpo" not in run_stages(cfg):
        run_policy_stages(cfg)
        return
    cfg = prepare(cfg)
    run_verl(cfg)
    from saferl.resume import logged_steps

    run_dir = Path(cfg.trainer.default_local_dir)
    steps = [s for s in logged_steps(run_dir) if s > 0]
    print(f"saferl: finished {max(steps, default=0)} steps; outputs in {run_dir}", flush=True)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    from saferl.preflight import refusing_bad_input

    with refusing_bad_input():
        run(cfg)


if __name__ == "__main__":
    main()
