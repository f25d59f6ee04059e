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
- gives each launch its own metrics file (verl's file logger truncates the file it opens);
- keeps the console to the run's progress, validations and errors, everything printed going to the
  run's `logs/console.log` (`saferl.console`, saferl/console.py), and ends with what the validations say.

`saferl.dry_run=true` runs the preflight checks (`saferl.preflight`) and exits without training.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import ray
from omegaconf import DictConfig, OmegaConf, open_dict

from rewards.judges import judge_address
from saferl import resources
from saferl.config_schema import ConfigError, check_saferl_config
from saferl.console import CONSOLE_MODES, filtered_console
from saferl.console import LOG_FILE as CONSOLE_LOG
from saferl.launch import apply_platform_env, ray_env_vars, worker_output_env
from saferl.preflight import (
    PLATFORMS,
    check_no_secrets,
    check_verl_types,
    preflight,
    refusing_bad_input,
    synthetic_data,
)
from saferl.ray_cluster import join_cluster
from saferl.resume import logged_steps, resume_point, trim_after
from saferl.run_summary import summary, validation_lines
from saferl.stages import absolute, prepare_policy, run_policy_stages, run_stages

REPO_ROOT, CONF_DIR = resources.ROOT, resources.CONF_DIR  # the checkout, or the wheel's copy of it
# What verl's checkpoints write last (trainer_base.py `_save_checkpoint`): the step a resume starts from.
LATEST_CHECKPOINT = "latest_checkpointed_iteration.txt"

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


def prepare(cfg: DictConfig) -> DictConfig:
    """Fill in what the config names but does not yet hold (the tiny model's path, the verl-format data,
    the warm-started policy), resolve it, write it to the run directory, and set the launch's metrics file."""
    check_no_secrets(cfg)
    if cfg.saferl.platform not in PLATFORMS:
        raise ValueError(f"saferl.platform={cfg.saferl.platform!r}: must be one of {PLATFORMS}")
    with open_dict(cfg):
        # verl's workers run in other processes (other working directories on other nodes).
        cfg.trainer.default_local_dir = absolute(cfg.trainer.default_local_dir)
    problem = synthetic_data(cfg)
    if problem:  # loud, not fatal: the dry run is where it fails (issue 19)
        logger.warning(problem)
        print(f"saferl: WARNING: {problem}", file=sys.stderr, flush=True)
    run_dir = Path(cfg.trainer.default_local_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prepare_policy(cfg, run_dir)
    cfg.trainer.v1.sampler.sampler_kwargs.judge = judge_address(cfg.saferl.reward.judge)
    OmegaConf.resolve(cfg)
    latest = resume_step(cfg)
    step = latest
    if latest:
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
        for name, value in worker_output_env().items():
            env_vars.setdefault(name, value)
        env_vars.VERL_FILE_LOGGER_PATH = str(metrics)
        env_vars.WANDB_DIR = str(run_dir)
        env_vars.SAFERL_RUN_DIR = str(run_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    logger.info("resolved config: %s; metrics of this launch: %s", run_dir / "config.yaml", metrics)
    return cfg


def run_verl(cfg: DictConfig) -> None:
    """verl's `main_ppo.main`, minus Hydra: auto device, `validate_config`, `run_ppo` with TaskRunnerV1.

    verl is imported here, not at the top: `run` has set the platform's environment by then."""
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(cfg)
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    join_cluster(cfg)  # a cluster started by scripts/slurm: verl's ray.init joins it
    print(
        f"saferl: verl {cfg.trainer.v1.trainer_mode} trainer (TaskRunnerV1), platform {cfg.saferl.platform}"
    )
    run_ppo(cfg, task_runner_class=TaskRunnerV1)


def run(cfg: DictConfig) -> None:
    """Check the saferl keys, set the platform up, then dry-run or train with verl's trainer."""
    check_no_secrets(cfg)  # first: a secret is refused as one, whatever else is wrong
    check_saferl_config(cfg)  # before anything is written
    check_verl_types(cfg)  # verl's keys too: `rollout.n=abc` named here, not in a worker's traceback
    if cfg.saferl.console not in CONSOLE_MODES:
        raise ConfigError(f"saferl.console: must be one of {CONSOLE_MODES}, got {cfg.saferl.console!r}")
    apply_platform_env(cfg)
    if cfg.saferl.dry_run:
        sys.exit(0 if preflight(cfg).ok else 1)
    if "grpo" not in run_stages(cfg):
        run_policy_stages(cfg)
        return
    run_dir = Path(absolute(cfg.trainer.default_local_dir))
    with filtered_console(
        run_dir,
        cfg.saferl.console,
        total_steps=cfg.trainer.total_training_steps,
        validation_lines=lambda step: validation_lines(run_dir, step),
    ) as console:
        cfg = prepare(cfg)
        run_verl(cfg)
        ray.shutdown()  # here: the workers' last lines still pass the console's filter into the log
        steps = [s for s in logged_steps(run_dir) if s > 0]
        console.say(
            [
                f"saferl: finished {max(steps, default=0)} steps; outputs in {run_dir} "
                f"(the full log: {run_dir / CONSOLE_LOG})",
                *summary(run_dir),  # did it learn: first -> best -> last, format alarm
            ]
        )


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    with refusing_bad_input():
        run(cfg)


if __name__ == "__main__":
    main()
