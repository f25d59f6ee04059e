"""`python -m saferl.train`: composition (`--cfg job`), the dry run, and secrets kept out of the config.

Every experiment is composed by the real Hydra app in a subprocess, exactly as a user types it. The
qwen experiments' dry run is checked twice: against what this machine lacks (no cached 3B weights, no
judge) it must FAIL naming both; with a local model directory and a judge endpoint (the loopback FAKE
judge server, standing in for a vLLM-served 72B judge) it must pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from judge_server import FakeJudgeServer
from omegaconf import OmegaConf

from saferl.preflight import SecretInConfigError, check_no_secrets
from saferl.resources import CONF_DIR, register_resolvers
from saferl.resources import ROOT as REPO_ROOT

register_resolvers()  # `${saferl_repo:}` in the experiment files, as the trainer registers it

EXPERIMENTS = tuple(sorted(p.stem for p in (CONF_DIR / "exp").glob("*.yaml")))


def train(*args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "saferl.train", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def composed(*overrides: str):
    import saferl.train  # noqa: F401  (registers the ${saferl_repo:} resolver)

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_cfg_job_prints_the_whole_config(exp: str) -> None:
    result = train(f"+exp={exp}", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    # verl's ppo_trainer underneath, saferl's parts on top
    assert cfg["actor_rollout_ref"]["rollout"]["agent"]["default_agent_loop"] == "safe_reflect"
    assert cfg["reward"]["reward_manager"]["name"] == "saferl_safety"
    assert cfg["algorithm"]["adv_estimator"] == "saferl_grpo"
    assert cfg["data"]["custom_cls"]["name"] == "QISafeDataset"
    assert set(cfg["saferl"]) >= {"platform", "reward", "rollout", "warm_start", "ray", "data"}
    # one trainer: verl's own, with saferl's replay buffer, for every experiment
    assert cfg["trainer"]["use_v1"] is True and cfg["trainer"]["v1"]["trainer_mode"] == "sync"
    assert cfg["trainer"]["v1"]["sampler"]["custom_sampler"]["name"] == "SaferlReplayBuffer"
    assert cfg["saferl"]["reward"]["rubric"]["criteria"]["safety_awareness"]["weight"] == 0.35
    assert cfg["trainer"]["experiment_name"] == {"tiny_eval_fixtures": "tiny"}.get(exp, exp)


def test_experiments_differ_in_platform_rollout_model_and_sizes() -> None:
    tiny = composed("+exp=tiny")
    assert (tiny.saferl.platform, tiny.saferl.tiny_model, tiny.saferl.reward.judge.kind) == (
        "cpu",
        "bpe",
        "rule",
    )
    assert (tiny.actor_rollout_ref.rollout.name, tiny.trainer.device) == ("hf", "cpu")
    assert tiny.saferl.env.VERL_PLATFORM == "cpu"
    assert Path(tiny.saferl.data.dir) == REPO_ROOT / "data" / "QI-Safe-10K" / "sample"
    q3 = composed("+exp=qwen3b")
    assert (q3.saferl.platform, q3.saferl.reward.judge.kind) == ("gpu", "openai")
    assert not q3.saferl.env  # verl's own platform, found by verl
    # the same parts on both: agent loop, reward, advantage, dataset, replay buffer
    for key in (
        "actor_rollout_ref.rollout.agent.default_agent_loop",
        "reward.reward_manager.name",
        "algorithm.adv_estimator",
        "data.custom_cls.name",
        "trainer.v1.sampler.custom_sampler.name",
        "trainer.v1.trainer_mode",
    ):
        assert OmegaConf.select(q3, key) == OmegaConf.select(tiny, key), key
    # the GPU experiment does not inherit the tiny warm start (3e-3, run in the driver)
    assert (list(q3.saferl.stages), q3.saferl.warm_start.lr) == (["grpo"], 1e-5)
    assert list(tiny.saferl.stages) == ["warm_start", "grpo"]
    assert q3.actor_rollout_ref.rollout.max_model_len == 6144
    assert q3.actor_rollout_ref.model.path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert q3.actor_rollout_ref.rollout.name == "vllm"
    assert "wandb" in q3.trainer.logger
    # GRPO after DESIGN.md: lr 1e-6, n=4, low_var_kl 0.01, rollout batch 256, 2 epochs
    actor = q3.actor_rollout_ref.actor
    assert (actor.optim.lr, actor.kl_loss_type, actor.kl_loss_coef, actor.use_kl_loss) == (
        1e-6,
        "low_var_kl",
        0.01,
        True,
    )
    assert (q3.actor_rollout_ref.rollout.n, q3.data.train_batch_size, q3.trainer.total_epochs) == (4, 256, 2)
    q7 = composed("+exp=qwen7b")
    assert q7.actor_rollout_ref.model.path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (q7.actor_rollout_ref.rollout.n, q7.actor_rollout_ref.actor.ppo_mini_batch_size) == (5, 128)
    assert q7.actor_rollout_ref.rollout.tensor_model_parallel_size == 2
    assert q7.saferl.reward.judge.kind == "openai"  # inherited from qwen3b


def test_judge_endpoint_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFERL_JUDGE_BASE_URL", "http://judge.internal:9000/v1")
    cfg = composed("+exp=qwen3b")
    assert cfg.saferl.reward.judge.openai.base_url == "http://judge.internal:9000/v1"


def test_the_gpu_extra_brings_the_flash_attn_verls_fsdp_extra_pins() -> None:
    """verl loads the policy with flash_attention_2 and its Qwen2-VL remove-padding path calls
    flash_attn_varlen_func, so the GPU install must bring the flash-attn verl's own `fsdp` extra pins."""
    import re
    from importlib.metadata import requires

    fsdp = [r for r in requires("verl") or [] if 'extra == "fsdp"' in r]
    wanted = {m.group(1) for r in fsdp if (m := re.match(r"verl\[(flash-attn[^\]]*)\]", r))}
    assert wanted, fsdp
    setup = (REPO_ROOT / "setup.py").read_text()
    [gpu] = re.findall(r'"gpu": \[([^\]]*)\]', setup)
    assert all(extra in gpu for extra in wanted), (gpu, wanted)


@pytest.mark.parametrize("exp", ["tiny", "tiny_smoke"])
def test_dry_run_tiny_passes_without_training(exp: str, tmp_path: Path) -> None:
    result = train(f"+exp={exp}", "saferl.dry_run=true", f"trainer.default_local_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run passed" in result.stdout
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written, not even Hydra's log


@pytest.mark.parametrize("exp", ["qwen3b", "qwen7b"])
def test_dry_run_qwen_fails_naming_what_is_missing(exp: str, tmp_path: Path) -> None:
    result = train(
        f"+exp={exp}",
        "saferl.dry_run=true",
        f"trainer.default_local_dir={tmp_path}",
        env={"HF_HUB_OFFLINE": "1", "SAFERL_JUDGE_BASE_URL": "http://127.0.0.1:9/v1"},
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any("[FAIL] model" in line and f"Qwen2.5-VL-{exp[4:].upper()}" in line for line in lines)
    assert any("[FAIL] judge" in line and "127.0.0.1:9" in line for line in lines)
    assert any("[  ok] config" in line and "validate_config" in line for line in lines)  # verl's own
    assert "dry run FAILED" in result.stdout


def qwen3b_dry_run(model: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`+exp=qwen3b saferl.dry_run=true` with the tiny model as the policy and a loopback judge."""
    with FakeJudgeServer(served_model="Qwen/Qwen2.5-VL-72B-Instruct") as judge:
        return train(
            "+exp=qwen3b",
            "saferl.dry_run=true",
            f"actor_rollout_ref.model.path={model}",
            *overrides,
            f"trainer.default_local_dir={run_dir}",
            env={"SAFERL_JUDGE_BASE_URL": judge.base_url},
        )


def test_dry_run_qwen_passes_with_a_model_and_a_judge(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = qwen3b_dry_run(
        tiny_model_dir,
        tmp_path,
        f"saferl.data.dir={REPO_ROOT / 'data' / 'QI-Safe-10K' / 'sample'}",
        "saferl.data.allow_synthetic=true",  # said so: a GPU smoke test on the sample
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[  ok] judge" in result.stdout and "dry run passed" in result.stdout


def test_dry_run_refuses_a_gpu_experiment_on_the_synthetic_sample(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """SAFERL_DATA_DIR unset: qwen3b's default data is the shipped sample, a 360-row CPU demo. The dry
    run fails naming it and the way out, instead of reporting `[ok] data`."""
    result = qwen3b_dry_run(tiny_model_dir, tmp_path / "run")
    assert result.returncode == 1, result.stdout + result.stderr
    data = next(line for line in result.stdout.splitlines() if "] data" in line)
    assert "[FAIL] data" in data and "synthetic sample" in data, data
    assert "SAFERL_DATA_DIR" in data and "saferl.data.allow_synthetic=true" in data
    assert not (tmp_path / "run").exists()  # a dry run leaves nothing behind


def test_dry_run_refuses_extra_mode(tiny_model_dir: Path, tmp_path: Path) -> None:
    from rollout.reflect_loop import check_rollout_mode

    result = train(
        "+exp=qwen3b",
        "saferl.dry_run=true",
        "saferl.rollout.mode=extra",
        f"actor_rollout_ref.model.path={tiny_model_dir}",
        f"trainer.default_local_dir={tmp_path}",
    )
    assert result.returncode == 1
    assert any("[FAIL] rollout" in line and "mode=extra" in line for line in result.stdout.splitlines())
    with pytest.raises(ValueError, match="mode=extra"):
        check_rollout_mode(composed("+exp=qwen3b", "saferl.rollout.mode=extra").saferl.rollout)


def test_secret_values_never_enter_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    check_no_secrets(composed("+exp=qwen3b"))  # the shipped experiments hold none
    with pytest.raises(SecretInConfigError, match=r"saferl\.reward\.judge\.openai\.api_key"):
        check_no_secrets(composed("+exp=qwen3b", "+saferl.reward.judge.openai.api_key=sk-live-123456789"))
    monkeypatch.setenv("SAFERL_JUDGE_API_KEY", "sk-judge-abcdef123456")
    with pytest.raises(SecretInConfigError, match=r"\$SAFERL_JUDGE_API_KEY"):
        check_no_secrets(composed("+exp=qwen3b", "trainer.experiment_name=run-sk-judge-abcdef123456"))


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("+saferl.reward.judge.openai.api_key=sk-live-123456789", "saferl.reward.judge.openai.api_key"),
        # a key typed where the variable's NAME belongs
        (
            "saferl.reward.judge.openai.api_key_env=sk-live-123456789",
            "saferl.reward.judge.openai.api_key_env",
        ),
        (
            "saferl.srpo.pairs.adversarial.generator.api_key_env=SKLIVE123456789",
            "saferl.srpo.pairs.adversarial.generator.api_key_env",
        ),
    ],
)
@pytest.mark.parametrize("command", ["saferl.train", "saferl.srpo pairs", "saferl.eval"])
def test_every_command_refuses_a_secret_by_its_path_without_echoing_it(
    command: str, override: str, path: str, tmp_path: Path
) -> None:
    """Hydra prints a failed job's overrides and a traceback: the refusal exits before, with the key's
    config path only, and nothing is written that holds the value."""
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", *command.split(), "+exp=tiny", override, f"trainer.default_local_dir={run}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"saferl: refused: {path} ")
    shown = result.stdout + result.stderr
    assert "Traceback" not in shown and "LIVE123" not in shown.upper()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not any("LIVE123" in p.read_text(errors="ignore").upper() for p in written)
    assert not (run / "config.yaml").exists()


def test_the_variables_every_env_key_names_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The value of a variable a renamed or added `*_env` key names is a secret too."""
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-judge-renamed-0001")
    monkeypatch.setenv("SAFERL_GENERATOR_API_KEY", "sk-generator-0002")
    renamed = "saferl.reward.judge.openai.api_key_env=MY_JUDGE_KEY"
    with pytest.raises(
        SecretInConfigError, match=r"trainer\.experiment_name contains the value of \$MY_JUDGE_KEY"
    ):
        check_no_secrets(composed("+exp=tiny", renamed, "trainer.experiment_name=x-sk-judge-renamed-0001"))
    with pytest.raises(SecretInConfigError, match=r"\$SAFERL_GENERATOR_API_KEY"):
        check_no_secrets(composed("+exp=tiny", "trainer.project_name=sk-generator-0002"))
    check_no_secrets(composed("+exp=tiny", renamed))  # a name is fine
    monkeypatch.setenv("SAFERL_JUDGE_API_KEY", "sk-default-name-0003")  # still checked once renamed
    with pytest.raises(SecretInConfigError, match=r"\$SAFERL_JUDGE_API_KEY"):
        check_no_secrets(composed("+exp=tiny", renamed, "trainer.project_name=sk-default-name-0003"))


def test_unknown_platform_is_a_clear_error(tmp_path: Path) -> None:
    result = train("+exp=tiny", "saferl.platform=tpu", f"trainer.default_local_dir={tmp_path}")
    assert result.returncode != 0
    assert "saferl.platform='tpu'" in result.stderr


@pytest.mark.parametrize("stage", ["warm_start", "srpo"])
def test_a_gpu_experiment_refuses_the_driver_stages(stage: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A warm start or SRPO on a GPU experiment is refused with the way to run it, never run on the
    driver's CPU with the tiny run's settings or skipped without a word."""
    result = train(
        "+exp=qwen3b",
        f"saferl.stages=[{stage},grpo]",
        f"actor_rollout_ref.model.path={tiny_model_dir}",
        f"saferl.data.dir={REPO_ROOT / 'data' / 'QI-Safe-10K' / 'sample'}",
        f"trainer.default_local_dir={tmp_path}",
    )
    assert result.returncode != 0
    assert f"saferl.stages has {stage} on a GPU experiment" in result.stderr
    assert f"python -m saferl.{stage}" in result.stderr
    assert not (tmp_path / "warm_start").exists() and not (tmp_path / "srpo").exists()


@pytest.mark.parametrize("stages", ["[grpo,warm_start]", "[warm_start,sft]", "[]", "[grpo,grpo]"])
def test_stages_out_of_order_or_unknown_are_refused(stages: str, tmp_path: Path) -> None:
    result = train("+exp=tiny", f"saferl.stages={stages}", f"trainer.default_local_dir={tmp_path}")
    assert result.returncode != 0
    assert "name one or more of ['warm_start', 'srpo', 'grpo'], each once, in that order" in result.stderr


def test_the_driver_resolves_the_config_FAKE_GPU_EDGE(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """qwen3b cannot start verl's workers without GPUs, so `run_ppo` itself is the edge replaced here:
    the test checks what the driver hands it. verl's own TaskRunnerV1; a config with no interpolation
    left (`${oc.env:...}` resolved in the driver's environment, not in a Ray worker's); the Ray address."""
    import verl.trainer.main_ppo as main_ppo

    from saferl.train import prepare, run_verl

    calls = []
    monkeypatch.setattr(
        main_ppo, "run_ppo", lambda config, task_runner_class: calls.append((config, task_runner_class))
    )
    monkeypatch.setenv("SAFERL_JUDGE_BASE_URL", "http://judge.internal:9000/v1")
    cfg = composed(
        "+exp=qwen3b",
        f"actor_rollout_ref.model.path={tiny_model_dir}",
        "saferl.ray.address=10.0.0.1:6379",
        f"trainer.default_local_dir={tmp_path}",
        f"saferl.data.dir={REPO_ROOT / 'data' / 'QI-Safe-10K' / 'sample'}",
    )
    run_verl(prepare(cfg))
    monkeypatch.delenv("SAFERL_JUDGE_BASE_URL")
    [(config, runner)] = calls
    assert runner is main_ppo.TaskRunnerV1
    assert config.ray_kwargs.ray_init.address == "10.0.0.1:6379"
    # Ray refuses a join that names resources or a system config: the cluster's are the head's own.
    assert config.ray_kwargs.ray_init._system_config is None and config.ray_kwargs.ray_init.num_cpus is None
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == "safe_reflect"
    assert "${" not in OmegaConf.to_yaml(config)  # nothing left for the task runner to resolve
    assert config.saferl.reward.judge.openai.base_url == "http://judge.internal:9000/v1"
    assert config.trainer.v1.sampler.sampler_kwargs.run_dir == str(tmp_path)
    written = OmegaConf.load(tmp_path / "config.yaml")
    assert written.saferl.reward.judge.openai.base_url == "http://judge.internal:9000/v1"
    env = config.ray_kwargs.ray_init.runtime_env.env_vars
    metrics_file = tmp_path / "metrics" / "from_step_0.jsonl"
    assert str(metrics_file) == env.VERL_FILE_LOGGER_PATH


def test_evaluation_starts_ray_as_verls_trainer_does() -> None:
    """`saferl.ray_cluster.ray_init_kwargs`: verl's runtime env and switches, the platform's fake GPUs
    and environment, and the 1 MiB inline limit, for the Ray that evaluation starts itself."""
    from saferl.launch import apply_platform_env
    from saferl.ray_cluster import ray_init_kwargs

    cfg = composed("+exp=tiny")
    apply_platform_env(cfg)
    kwargs = ray_init_kwargs(cfg)
    assert kwargs["num_gpus"] == 2 and kwargs["num_cpus"] == 8
    assert kwargs["_system_config"] == {"max_direct_call_object_size": 1 << 20}
    env = kwargs["runtime_env"]["env_vars"]
    assert env["VERL_PLATFORM"] == "cpu" and env["NCCL_DEBUG"] == "WARN"  # saferl's over verl's
    assert env["TOKENIZERS_PARALLELISM"] == "false"  # the platform's value wins over verl's "true"
    cfg.saferl.ray.address = "10.0.0.1:6379"
    joined = ray_init_kwargs(cfg)
    assert joined["address"] == "10.0.0.1:6379"
    assert not {"num_cpus", "num_gpus", "_system_config"} & set(joined)


def test_qwen3b_pst_chains_warm_start_srpo_and_grpo_through_one_run_directory(tmp_path: Path) -> None:
    cfg = composed("+exp=qwen3b_pst", f"trainer.default_local_dir={tmp_path}")
    assert list(cfg.saferl.stages) == ["grpo"]  # the PST stages run as their own commands on GPUs
    assert cfg.saferl.srpo.policy == f"{tmp_path}/warm_start"  # SRPO starts from the warm start's --out
    assert cfg.actor_rollout_ref.model.path == f"{tmp_path}/srpo/model"  # GRPO starts from SRPO's output
    assert list(cfg.saferl.srpo.pairs.sources) == ["contrastive", "adversarial"]
    assert (cfg.saferl.srpo.dpo.lr, cfg.saferl.reward.judge.kind) == (5e-7, "openai")
    assert cfg.actor_rollout_ref.rollout.name == "vllm" and cfg.trainer.experiment_name == "qwen3b_pst"
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    with pytest.raises(ValueError, match=r"saferl.srpo.policy=.*set one or the other"):
        from saferl.stages import srpo_stage

        composed_cpu = composed("+exp=tiny", "saferl.srpo.policy=/some/policy")
        srpo_stage(composed_cpu)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+saferl.rollout.turn_max_token=5",
            "saferl.rollout.turn_max_token: unknown key; did you mean 'turn_max_tokens'?",
        ),
        (
            "+saferl.reward.judge.openai.base_ur=x",
            "saferl.reward.judge.openai.base_ur: unknown key; did you mean 'base_url'?",
        ),
        (
            "saferl.srpo.dpo.lr=fast",
            "saferl.srpo.dpo.lr: Value 'fast' of type 'str' could not be converted to Float",
        ),
        ("saferl.stages=grpo", "saferl.stages: expected a list"),
        (  # verl's keys too, typed by verl's own defaults
            "actor_rollout_ref.rollout.n=abc",
            "actor_rollout_ref.rollout.n: expected an integer (verl's default: 1), got 'abc'",
        ),
        ("trainer.val_before_train=maybe", "trainer.val_before_train: expected true or false"),
        ("saferl.console=loud", "saferl.console: must be one of ('quiet', 'full'), got 'loud'"),
    ],
)
def test_a_bad_saferl_key_is_refused_by_its_path_before_anything_is_written(
    override: str, message: str, tmp_path: Path
) -> None:
    result = train("+exp=tiny", override, f"trainer.default_local_dir={tmp_path / 'run'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"saferl: refused: {message}" in result.stderr.strip().splitlines()[-1]
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and "hydra" not in p.parts]
    assert written == []  # Hydra's launch log aside, nothing: no data conversion, no config.yaml


def test_every_experiment_fits_the_schema_and_a_typo_in_one_is_named(tmp_path: Path) -> None:
    """An experiment file's typo is merged by Hydra without a word: the schema names it."""
    from saferl.config_schema import ConfigError, check_saferl_config

    for exp in EXPERIMENTS:
        check_saferl_config(composed(f"+exp={exp}"))
    with pytest.raises(ConfigError, match=r"saferl\.warm_start\.step: unknown key; did you mean 'steps'\?"):
        check_saferl_config(composed("+exp=tiny", "+saferl.warm_start.step=3"))


def test_the_search_path_holds_config_groups_only_and_none_shadows_verls() -> None:
    """Data files (policies, the sample's content, the source map, the curation recipe) live under
    data/, so Hydra offers none of them as an option; saferl's groups are under saferl/, so an override
    like `data=synthetic_sample` cannot replace verl's `data` node with one of them."""
    result = train("+exp=tiny", "--help")
    assert result.returncode == 0, result.stderr
    groups = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = sorted(line.split(":")[0] for line in groups.splitlines() if ": " in line)
    assert listed == [
        "exp",
        "saferl/platform",
        "saferl/reward",
        "saferl/rollout",
        "saferl/srpo",
        "saferl/warm_start",
    ]
    shadow = train("+exp=tiny", "data=synthetic_sample", "--cfg", "job")
    assert shadow.returncode != 0 and "synthetic_sample" in shadow.stderr
    assert not list((REPO_ROOT / "conf").rglob("*")) or all(
        p.suffix == ".yaml" or p.is_dir() for p in (REPO_ROOT / "conf").rglob("*")
    )


def test_synthetic_data_is_found_in_verl_format_files_too(tmp_path: Path) -> None:
    """The start's warning and the dry run's failure read `extra_info.source` in converted files, and
    stay silent on CPU experiments (the sample is their data) and once the user says so."""
    from saferl.data.verl_format import convert_dataset
    from saferl.preflight import synthetic_data

    convert_dataset(REPO_ROOT / "data" / "QI-Safe-10K" / "sample", tmp_path)
    files = [f"data.train_files={tmp_path / 'train.parquet'}", f"data.val_files={tmp_path / 'val.parquet'}"]
    gpu = composed("+exp=qwen3b", "saferl.data.dir=null", *files)
    problem = synthetic_data(gpu)
    assert problem is not None and problem.startswith("324 of 324 rows in data.train_files/val_files"), (
        problem
    )
    assert (
        synthetic_data(
            composed("+exp=qwen3b", "saferl.data.dir=null", "saferl.data.allow_synthetic=true", *files)
        )
        is None
    )
    assert synthetic_data(composed("+exp=tiny", "saferl.data.dir=null", *files)) is None


def test_every_experiment_has_verls_types_and_a_bad_verl_value_is_named() -> None:
    from saferl.config_schema import ConfigError
    from saferl.preflight import check_verl_types

    for exp in EXPERIMENTS:
        check_verl_types(composed(f"+exp={exp}"))
    with pytest.raises(
        ConfigError, match=r"^trainer\.total_epochs: expected an integer \(verl's default: 30\), got 1\.5$"
    ):
        check_verl_types(composed("+exp=tiny", "trainer.total_epochs=1.5"))
    check_verl_types(composed("+exp=tiny", "actor_rollout_ref.actor.optim.lr=1"))  # an int is a number


def test_a_failed_start_leaves_a_finished_run_as_it_was(tmp_path: Path) -> None:
    """A mistyped override on the directory of a finished run: refused before the data conversion, so
    the run's data, config and metrics keep their bytes (Hydra's log of the launch aside)."""
    run = tmp_path / "run"
    kept = {
        "data/train.parquet": b"train",
        "data/val.parquet": b"val",
        "config.yaml": b"x: 1\n",
        "metrics/from_step_0.jsonl": b"{}\n",
    }
    for name, content in kept.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(content)
    result = train("+exp=tiny", "actor_rollout_ref.rollout.n=abc", f"trainer.default_local_dir={run}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "saferl: refused: actor_rollout_ref.rollout.n: expected an integer" in result.stderr
    files = {
        str(p.relative_to(run)): p.read_bytes()
        for p in run.rglob("*")
        if p.is_file() and "hydra" not in p.parts
    }
    assert files == kept
