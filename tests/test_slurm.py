"""The SLURM launch scripts (scripts/slurm/): syntax, argument handling, and the multi-node logic run for
real on one machine.

SLURM itself cannot run here, so the only stand-ins are for what SLURM provides: `srun` (drops its
options and runs the command on this machine), `scontrol show hostnames` (two node names) and
`hostname --ip-address` (several addresses, as on a multi-homed node). Everything else is real: the actual
`multi_node.sbatch` under bash, two `ray start --block` processes (a head, then a worker joining it: two
raylets on one host), the node-count wait, the real training driver joining that cluster, and the
teardown. No `ray.init` in the pytest process: the cluster lives in the subprocess tree only.

One thing is not run for real: the teardown's last step, `ray stop` on every node. `ray stop` kills every
Ray process of the user on the host, whichever cluster it belongs to; on a SLURM node the job holds
exclusively that is what we want, on this shared machine it would kill other tests' clusters. The srun
stand-in logs it instead, and the test checks that the script asked for it on both nodes and that the
real teardown (SIGTERM to each `ray start --block`) left no process of this test's cluster behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = ROOT / "scripts" / "slurm"
MULTI_NODE = SLURM_DIR / "multi_node.sbatch"
SINGLE_NODE = SLURM_DIR / "single_node.sbatch"
SCRIPTS = sorted(p for p in SLURM_DIR.iterdir() if p.suffix in {".sh", ".sbatch"})
NODES = ("stand-in-node-1", "stand-in-node-2")

# Stand-ins for SLURM's commands (SLURM cannot run on this machine). Each logs its call to $SLURM_SHIM_LOG.
SRUN_STANDIN = r"""#!/usr/bin/env bash
# STAND-IN for SLURM's srun: drop srun's options, run the command here (every "node" is this machine).
node=""
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in
    -w | --nodelist) node="$2"; shift 2 ;;
    -N | -n | -c | --nodes | --ntasks | --cpus-per-task | --gpus-per-task | --export) shift 2 ;;
    --nodelist=*) node="${1#*=}"; shift ;;
    *) shift ;;
  esac
done
echo "srun -w ${node:-?}: $*" >>"$SLURM_SHIM_LOG"
if [[ "${1:-}" == ray && "${2:-}" == stop ]]; then
  # `ray stop` is machine-wide: on this shared machine it would stop other clusters too. Logged only.
  echo "srun -w $node: (stand-in) skipped machine-wide ray stop" >>"$SLURM_SHIM_LOG"
  exit 0
fi
exec "$@"
"""
SCONTROL_STANDIN = (
    r"""#!/usr/bin/env bash
# STAND-IN for SLURM's scontrol: only `scontrol show hostnames LIST`.
echo "scontrol $*" >>"$SLURM_SHIM_LOG"
if [[ "${1:-} ${2:-}" == "show hostnames" ]]; then
  printf '%s\n' """
    + " ".join(NODES)
    + r"""
  exit 0
fi
echo "scontrol stand-in: unsupported: $*" >&2
exit 2
"""
)
HOSTNAME_STANDIN = r"""#!/usr/bin/env bash
# STAND-IN for `hostname --ip-address` on a multi-homed node: several addresses, IPv6 first.
if [[ "${1:-}" == --ip-address || "${1:-}" == -i ]]; then
  echo "::1 127.0.0.1 fe80::1"
  exit 0
fi
exec /bin/hostname "$@"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _processes_mentioning(marker: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of every process whose command line contains `marker` (this test's Ray temp dir
    appears in the command line of each of its Ray processes: ray start, gcs_server, raylets, workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append((int(entry.name), cmdline))
    return found


@pytest.fixture
def standins(tmp_path: Path) -> Path:
    """A directory holding the SLURM stand-ins, to put first on PATH."""
    path = tmp_path / "slurm-standins"
    path.mkdir()
    for name, text in (
        ("srun", SRUN_STANDIN),
        ("scontrol", SCONTROL_STANDIN),
        ("hostname", HOSTNAME_STANDIN),
    ):
        (path / name).write_text(text)
        (path / name).chmod(0o755)
    return path


@pytest.fixture
def ray_tmp():
    """A private Ray temp dir with a short path (Ray's socket paths must stay under ~107 characters).
    Afterwards, any process of this test's cluster that survived is killed, by pid, and reported."""
    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    yield path
    leftovers = _processes_mentioning(str(path))
    for pid, _ in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"processes of this test's Ray cluster outlived it: {leftovers}"


def _base_env(**extra: str) -> dict[str, str]:
    """This environment without SLURM's, Ray's or the scripts' own variables, this Python's bin first on
    PATH (the scripts run `python` and `ray` from PATH, as after activating the env on a cluster)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "RAY_", "SAFERL_JUDGE_")) and k not in {"RUN_DIR", "SAFERL_DRIVER"}
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def _env(standins: Path, ray_tmp: Path, **extra: str) -> dict[str, str]:
    """The job's environment: what SLURM would set, with the stand-ins first on PATH."""
    env = _base_env()
    env.update(
        PATH=os.pathsep.join([str(standins), env["PATH"]]),
        SLURM_SHIM_LOG=str(ray_tmp / "slurm-standins.log"),
        SLURM_JOB_NODELIST="stand-in-node-[1-2]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="saferl-multi",
        RAY_PORT=str(_free_port()),
        RAY_TEMP_DIR=str(ray_tmp),
        # Two nodes on one host: no fixed per-node ports (dashboard agent, client server, dashboard).
        RAY_START_ARGS="--dashboard-agent-listen-port=0 --object-store-memory=200000000",
        RAY_HEAD_START_ARGS=(
            f"--include-dashboard=false --dashboard-port={_free_port()} "
            f"--ray-client-server-port={_free_port()}"
        ),
        RAY_WAIT_TIMEOUT="180",
        # Every stand-in node is this host: it advertises loopback, which the scripts refuse unless told.
        RAY_ALLOW_LOOPBACK="1",
        GPUS_PER_NODE="0",
        RUN_DIR=str(ray_tmp / "run"),
    )
    env.update(extra)
    return env


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script: Path):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_headers():
    for script in (SINGLE_NODE, MULTI_NODE):
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "#SBATCH --output=logs/%x-%j.out" in text
        assert "set -euo pipefail" in text


def test_single_node_command_line(tmp_path: Path):
    """The driver's command line, with `echo` as the driver: experiment, one node, GPUs, overrides verbatim,
    the run directory made absolute and added as trainer.default_local_dir."""
    run_dir = tmp_path / "run"
    env = _base_env(
        SAFERL_DRIVER="echo DRIVER",
        GPUS_PER_NODE="8",
        SLURM_JOB_ID="77",
        RUN_DIR=str(run_dir),
        SAFERL_JUDGE_BASE_URL="http://judge:8000/v1",
    )
    result = subprocess.run(
        ["bash", str(SINGLE_NODE), "qwen3b", "trainer.total_epochs=1", "data.train_files=[a,b]"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("DRIVER "))
    assert line.split()[1:] == [
        "+exp=qwen3b",
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=8",
        "trainer.total_epochs=1",
        "data.train_files=[a,b]",
        f"trainer.default_local_dir={run_dir}",
        "saferl.reward.judge.openai.base_url=http://judge:8000/v1",
    ]
    assert f"run directory: {run_dir}" in result.stdout
    assert run_dir.is_dir()


def test_run_dir_from_override_wins(tmp_path: Path):
    """trainer.default_local_dir among the overrides is the run directory; no second one is added."""
    env = _base_env(SAFERL_DRIVER="echo DRIVER", GPUS_PER_NODE="0", RUN_DIR=str(tmp_path / "unused"))
    result = subprocess.run(
        ["bash", str(SINGLE_NODE), "tiny", f"trainer.default_local_dir={tmp_path / 'mine'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("DRIVER "))
    assert line.count("trainer.default_local_dir=") == 1
    assert f"run directory: {tmp_path / 'mine'}" in result.stdout
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "usage: sbatch"),
        (["qwen3b", "saferl.reward.judge.openai.api_key=sk-123"], "looks like a secret"),
        (["qwen3b", "+wandb.api_key=abc"], "looks like a secret"),
        (["qwen3b", "saferl.judge.hf_token=abc"], "looks like a secret"),
        (["qwen3b", "saferl.reward.judge.openai.api_key_env=sk-123abc"], "must name an environment variable"),
        (
            ["qwen3b", "saferl.reward.judge.openai.api_key_env=SK12345678901"],
            "must name an environment variable",
        ),
        (["no-such-exp"], "no experiment 'no-such-exp'"),
        (["+exp=tiny"], "not an override"),
    ],
)
def test_refuses_bad_arguments(args: list[str], message: str, tmp_path: Path):
    for script in (SINGLE_NODE, MULTI_NODE):
        env = _base_env(SAFERL_DRIVER="echo", RUN_DIR=str(tmp_path / "run"))
        result = subprocess.run(
            ["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode != 0
        assert message in result.stderr
        assert "sk-123" not in result.stdout + result.stderr and "SK123" not in result.stdout + result.stderr


def test_head_failure_fails_fast(standins: Path, ray_tmp: Path):
    """A head that cannot start fails the job at once, naming the node, not after the wait timeout."""
    env = _env(standins, ray_tmp, RAY_START_ARGS="--no-such-option")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(MULTI_NODE), "tiny"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode != 0
    assert f"ray start on {NODES[0]} exited early" in result.stderr
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_multi_node_on_one_machine(standins: Path, ray_tmp: Path, saferl_cache: Path):
    """multi_node.sbatch, run as SLURM would run it on two nodes, with the real `python -m saferl.train`:
    a head and a worker node (two raylets on this host), both alive before the driver starts, the driver
    joined to that cluster, one tiny_smoke training step, exit 0, then nothing of the cluster left running.

    One fake GPU per node and `trainer.nnodes=2`: verl's trainer places one FSDP worker (and one HF
    rollout replica) on each node, so the worker node is used, not just present."""
    # verl's CPU platform places one worker per (fake) GPU: one per node, an FSDP group across both.
    # Ray's CPUs are logical: each node's GPU bundle asks for several beside the task runner and
    # TransferQueue's actors, which may all land on one node, so give each node room for both.
    env = _env(standins, ray_tmp, CPUS_PER_NODE="8", GPUS_PER_NODE="1", SAFERL_CACHE_DIR=str(saferl_cache))
    run_dir = ray_tmp / "run"
    command = [
        "bash",
        str(MULTI_NODE),
        "tiny_smoke",
        "trainer.total_training_steps=1",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.logger=[console]",
        f"trainer.default_local_dir={run_dir}",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the script's own process group: its trap tears Ray down
        output, _ = proc.communicate(timeout=120)
        pytest.fail(f"multi_node.sbatch did not finish in 900 s:\n{output[-6000:]}")
    elapsed = time.monotonic() - started
    tail = output[-6000:]
    assert proc.returncode == 0, tail

    # The cluster: both nodes alive before the driver started, a head and a worker.
    assert "ray cluster: 2/2 nodes alive" in output, tail
    assert re.search(r"node .*: CPU=8 GPU=1 head=True", output), tail
    assert re.search(r"node .*: CPU=8 GPU=1 head=False", output), tail
    logs = ray_tmp / "session_latest" / "logs"
    assert (logs / "raylet.out").is_file() and (logs / "raylet.1.out").is_file(), "expected two raylets"

    # The driver: started after the wait, on the head, joined that cluster (not a Ray of its own), trained.
    driver_at = output.index(f"driver on {NODES[0]}:")
    assert output.index("ray cluster: 2/2 nodes alive") < driver_at
    driver_output = output[driver_at:]
    assert "saferl.ray.address=127.0.0.1:" in driver_output.splitlines()[0]
    assert "trainer.nnodes=2 trainer.n_gpus_per_node=1" in driver_output.splitlines()[0]
    # Ray's INFO record of joining: in the run's full log (the console shows progress and errors only)
    assert "Connecting to existing Ray cluster" in (run_dir / "logs" / "console.log").read_text(), tail
    assert "driver exited with status 0" in driver_output, tail

    # SLURM's side: head IP from the head (first IPv4 of several), a step per node, ray stop asked on both.
    srun_log = (ray_tmp / "slurm-standins.log").read_text()
    assert f"srun -w {NODES[0]}: hostname --ip-address" in srun_log
    assert (
        f"srun -w {NODES[0]}: ray start --head --node-ip-address=127.0.0.1 --port={env['RAY_PORT']}"
        in srun_log
    )
    assert f"srun -w {NODES[1]}: hostname --ip-address" in srun_log  # each worker's own address
    assert (
        f"srun -w {NODES[1]}: ray start --address=127.0.0.1:{env['RAY_PORT']} --node-ip-address=127.0.0.1"
        in srun_log
    )
    assert "saferl: verl sync trainer (TaskRunnerV1), platform cpu" in driver_output, tail
    for node in NODES:
        assert f"srun -w {node}: ray stop" in srun_log

    # Teardown: every process of this cluster is gone (ray_tmp's finalizer checks again, and kills).
    assert "teardown done" in output
    deadline = time.monotonic() + 30
    while _processes_mentioning(str(ray_tmp)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _processes_mentioning(str(ray_tmp))
    print(f"multi_node.sbatch on two stand-in nodes: {elapsed:.0f} s")


@pytest.mark.parametrize(
    ("addresses", "allow_loopback", "expected"),
    [
        ("::1 127.0.1.1 10.1.2.3", "0", "10.1.2.3"),  # Debian's /etc/hosts entry first: skipped
        ("127.0.1.1", "0", None),  # nothing another node can reach: an error, not a loopback head
        ("127.0.1.1", "1", "127.0.1.1"),  # a one-machine "cluster", said so explicitly
    ],
)
def test_the_head_never_advertises_loopback_unless_told(
    addresses: str, allow_loopback: str, expected
) -> None:
    script = (
        f"source {ROOT / 'scripts' / 'slurm' / 'common.sh'}; source {ROOT / 'scripts' / 'slurm' / 'ray_cluster.sh'}; "
        f"ray_cluster_first_ipv4 '{addresses}'"
    )
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env=_base_env(RAY_ALLOW_LOOPBACK=allow_loopback),
    )
    assert (result.returncode == 0) == (expected is not None)
    assert result.stdout == (expected or "")
