# shellcheck shell=bash
# Shared by single_node.sbatch and multi_node.sbatch (sourced, never run): argument parsing, environment
# activation, the run directory and the node's GPU/CPU counts. Every variable read here is documented in
# scripts/slurm/README.md. Nothing here is SLURM-only: with the SLURM_* variables unset it runs anywhere.

saferl_log() { echo "[saferl $(date +%H:%M:%S)] $*"; }
saferl_die() {
  echo "[saferl $(date +%H:%M:%S)] error: $*" >&2
  exit 1
}

# saferl_parse_args EXP [OVERRIDE ...]: sets EXP and the array OVERRIDES (Hydra overrides, passed verbatim).
saferl_parse_args() {
  if [[ $# -lt 1 || -z "${1:-}" || "$1" == -* ]]; then
    saferl_die "usage: sbatch $(basename "${0:-script}") EXP [HYDRA_OVERRIDE ...]   (EXP: tiny | qwen3b | qwen7b)"
  fi
  EXP="$1"
  shift
  if [[ "$EXP" == *=* ]]; then
    saferl_die "the first argument is the experiment's name (e.g. qwen3b), not an override: '$EXP'"
  fi
  if [[ -n "${SAFERL_ROOT:-}" && ! -f "$SAFERL_ROOT/conf/exp/$EXP.yaml" ]]; then
    local known=() file
    for file in "$SAFERL_ROOT"/conf/exp/*.yaml; do
      if [[ -f "$file" ]]; then known+=("$(basename "$file" .yaml)"); fi
    done
    saferl_die "no experiment '$EXP' (conf/exp/$EXP.yaml); known: ${known[*]:-none}"
  fi
  OVERRIDES=("$@")
  # The same rules as saferl.preflight.check_no_secrets: a key whose last part ends like a secret's name,
  # and a *_env key whose value is not an environment variable's name (it may be the key itself).
  local arg key leaf value digits
  for arg in "${OVERRIDES[@]}"; do
    [[ "$arg" == *=* ]] || continue
    key="${arg%%=*}"
    leaf="${key##*.}"
    value="${arg#*=}"
    if [[ "${leaf,,}" =~ (api_?key|secret|password|token)$ && -n "$value" ]]; then
      saferl_die "override '$key=…' looks like a secret: export it in the environment instead" \
        "(see scripts/slurm/README.md); overrides land in the config that is logged to W&B"
    fi
    digits="${value//[^0-9]/}"
    if [[ "$leaf" == *_env && ( ! "$value" =~ ^[A-Z_][A-Z0-9_]{0,63}$ || ${#digits} -gt 7 ) ]]; then
      saferl_die "override '$key=…' must name an environment variable (e.g. SAFERL_JUDGE_API_KEY)," \
        "and its value does not look like one: put the key in the environment under a name"
    fi
  done
}

# saferl_override_value KEY: the value of KEY=... among OVERRIDES (last one wins), empty if absent.
saferl_override_value() {
  local key="$1" arg value=""
  for arg in "${OVERRIDES[@]}"; do
    case "$arg" in
      "$key"=* | "+$key"=* | "++$key"=*) value="${arg#*=}" ;;
    esac
  done
  printf '%s' "$value"
}

saferl_has_override() {
  local key="$1" arg
  for arg in "${OVERRIDES[@]}"; do
    case "$arg" in
      "$key"=* | "+$key"=* | "++$key"=*) return 0 ;;
    esac
  done
  return 1
}

# saferl_activate_env: SAFERL_ENV_SETUP (a file to source first: module loads, proxies), then
# SAFERL_CONDA_ENV (conda activate NAME) or SAFERL_VENV (DIR/bin/activate). srun forwards the resulting
# environment (PATH included) to every step, so the Ray nodes and the driver use the same Python.
saferl_activate_env() {
  if [[ -n "${SAFERL_ENV_SETUP:-}" ]]; then
    [[ -f "$SAFERL_ENV_SETUP" ]] || saferl_die "SAFERL_ENV_SETUP=$SAFERL_ENV_SETUP: no such file"
    # shellcheck disable=SC1090
    source "$SAFERL_ENV_SETUP"
  fi
  if [[ -n "${SAFERL_CONDA_ENV:-}" ]]; then
    command -v conda >/dev/null || saferl_die "SAFERL_CONDA_ENV is set but conda is not on PATH"
    eval "$(conda shell.bash hook)"
    conda activate "$SAFERL_CONDA_ENV"
  elif [[ -n "${SAFERL_VENV:-}" ]]; then
    [[ -f "$SAFERL_VENV/bin/activate" ]] || saferl_die "SAFERL_VENV=$SAFERL_VENV: no bin/activate"
    # shellcheck disable=SC1091
    source "$SAFERL_VENV/bin/activate"
  fi
  command -v "${SAFERL_PYTHON:-python}" >/dev/null ||
    saferl_die "${SAFERL_PYTHON:-python} not on PATH (set SAFERL_VENV, SAFERL_CONDA_ENV or SAFERL_ENV_SETUP)"
}

# saferl_gpus_per_node: GPUS_PER_NODE, else SLURM's count for this node, else nvidia-smi's, else 0.
saferl_gpus_per_node() {
  if [[ -n "${GPUS_PER_NODE:-}" ]]; then
    printf '%s' "$GPUS_PER_NODE"
  elif [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then
    printf '%s' "$SLURM_GPUS_ON_NODE"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    printf '0'
  fi
}

# saferl_cpus_per_node: CPUS_PER_NODE, else SLURM's count for this node, else every core.
saferl_cpus_per_node() {
  printf '%s' "${CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-$(nproc)}}"
}

# saferl_run_dir: sets RUN_DIR, the run's directory (trainer.default_local_dir: checkpoints, data, Hydra's
# log under hydra/). An override of trainer.default_local_dir wins; else RUN_DIR; else runs/EXP-JOBID
# under the checkout. Made absolute, because every node's workers write there (use a shared filesystem).
saferl_run_dir() {
  local from_override
  from_override="$(saferl_override_value trainer.default_local_dir)"
  if [[ -n "$from_override" ]]; then
    RUN_DIR="$from_override"
  else
    RUN_DIR="${RUN_DIR:-runs/${EXP}-${SLURM_JOB_ID:-$(date +%Y%m%d-%H%M%S)}}"
    OVERRIDES+=("trainer.default_local_dir=$(realpath -m "$RUN_DIR")")
  fi
  RUN_DIR="$(realpath -m "$RUN_DIR")"
  mkdir -p "$RUN_DIR"
  # The judge endpoint is not a secret: it goes in as an override, so the run's config records it.
  if [[ -n "${SAFERL_JUDGE_BASE_URL:-}" ]] && ! saferl_has_override saferl.reward.judge.openai.base_url; then
    OVERRIDES+=("saferl.reward.judge.openai.base_url=$SAFERL_JUDGE_BASE_URL")
  fi
}

# saferl_driver_cmd: the array DRIVER, from SAFERL_DRIVER (word-split; default `python -m saferl.train`).
saferl_driver_cmd() {
  read -r -a DRIVER <<<"${SAFERL_DRIVER:-${SAFERL_PYTHON:-python} -m saferl.train}"
  [[ ${#DRIVER[@]} -gt 0 ]] || saferl_die "SAFERL_DRIVER is empty"
}

# saferl_report_env: which of the forwarded variables are set (names only; values of secrets never).
saferl_report_env() {
  local name set_names=() unset_names=()
  local judge_key_env
  judge_key_env="$(saferl_override_value saferl.reward.judge.openai.api_key_env)"
  judge_key_env="${judge_key_env:-SAFERL_JUDGE_API_KEY}"
  for name in "$judge_key_env" SAFERL_JUDGE_BASE_URL WANDB_API_KEY WANDB_MODE HF_HOME HF_HUB_OFFLINE \
    SAFERL_CACHE_DIR; do
    if [[ -n "${!name:-}" ]]; then set_names+=("$name"); else unset_names+=("$name"); fi
  done
  saferl_log "environment set: ${set_names[*]:-none}; unset: ${unset_names[*]:-none}"
}
