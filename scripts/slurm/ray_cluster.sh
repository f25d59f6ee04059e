# shellcheck shell=bash
# A Ray cluster over a SLURM allocation (sourced, never run): head on the first node, one worker on each
# other node, wait until every node has joined, run the driver on the head, tear everything down on exit.
# It uses only `scontrol show hostnames`, `srun` and the environment, so it also runs outside SLURM with
# stand-ins for those two commands (tests/test_slurm.py does, with two Ray nodes on one machine).
#
# Reads (all optional; README.md): SLURM_JOB_NODELIST, SLURM_JOB_NUM_NODES, RAY_PORT, GPUS_PER_NODE,
# CPUS_PER_NODE, RAY_TEMP_DIR, RAY_START_ARGS, RAY_HEAD_START_ARGS, RAY_SRUN_ARGS, RAY_WAIT_TIMEOUT,
# RAY_SYSTEM_CONFIG, RAY_STOP_TIMEOUT, RAY_STOP_ON_EXIT, RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, SAFERL_PYTHON.
# Needs common.sh (saferl_log, saferl_die, saferl_gpus_per_node, saferl_cpus_per_node) sourced first.

RAY_CLUSTER_PIDS=()   # the background `srun … ray start --block` steps, head first
RAY_CLUSTER_NODES=()  # host names, head first

rc_log() { echo "[ray_cluster $(date +%H:%M:%S)] $*"; }

# ray_cluster_nodes: RAY_CLUSTER_NODES from the allocation; sets RAY_HEAD_NODE.
ray_cluster_nodes() {
  [[ -n "${SLURM_JOB_NODELIST:-}" ]] || saferl_die "SLURM_JOB_NODELIST is not set: run under sbatch/salloc"
  local nodes
  nodes="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"
  # shellcheck disable=SC2206  # one host name per word, as SLURM prints them
  local nodes_array=($nodes)
  [[ ${#nodes_array[@]} -ge 1 ]] || saferl_die "no hosts in SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST"
  if [[ -n "${SLURM_JOB_NUM_NODES:-}" && "$SLURM_JOB_NUM_NODES" != "${#nodes_array[@]}" ]]; then
    saferl_die "SLURM_JOB_NUM_NODES=$SLURM_JOB_NUM_NODES but the node list has ${#nodes_array[@]} hosts"
  fi
  RAY_CLUSTER_NODES=("${nodes_array[@]}")
  RAY_HEAD_NODE="${nodes_array[0]}"
}

# ray_cluster_first_ipv4 "ADDR ADDR …": the first IPv4 address among the words that other nodes can reach
# (hostname --ip-address can print several, IPv6 and IPv4 mixed, on multi-homed nodes). Loopback (127.x:
# Debian's /etc/hosts maps the host name to 127.0.1.1) is skipped: a head advertising it can never be
# joined. RAY_ALLOW_LOOPBACK=1 accepts it, for a "cluster" of one machine (the tests).
ray_cluster_first_ipv4() {
  local word
  for word in $1; do
    if [[ "$word" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then
      if [[ "$word" == 127.* && "${RAY_ALLOW_LOOPBACK:-0}" != 1 ]]; then continue; fi
      printf '%s' "$word"
      return 0
    fi
  done
  return 1
}

# ray_cluster_node_ip NODE: NODE's own reachable IPv4 address, as the node itself reports it.
ray_cluster_node_ip() {
  local addresses
  addresses="$(srun --nodes=1 --ntasks=1 -w "$1" hostname --ip-address)"
  ray_cluster_first_ipv4 "$addresses" ||
    saferl_die "no reachable IPv4 address for $1 in '$addresses' (hostname --ip-address; loopback is" \
      "skipped: fix the node's /etc/hosts, or set RAY_ALLOW_LOOPBACK=1 for a one-machine cluster)"
}

# ray_cluster_head_ip: RAY_HEAD_IP, the head's address as the head itself reports it.
ray_cluster_head_ip() {
  RAY_HEAD_IP="$(ray_cluster_node_ip "$RAY_HEAD_NODE")" || exit 1
}


# ray_cluster_auth: Ray 2.60 turns token authentication on for `ray start --head` when a token exists
# (~/.ray/auth_token), but a worker's `ray start --address` or a driver's ray.init(address=HOST:PORT) do
# not turn it on by themselves: they are then refused. Decide it once for the job, in the environment srun
# forwards: token mode, with a fresh per-job token unless one is provided. RAY_AUTH_MODE=disabled opts out.
ray_cluster_auth() {
  export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
  if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    RAY_AUTH_TOKEN="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
    export RAY_AUTH_TOKEN
  fi
  rc_log "Ray authentication: $RAY_AUTH_MODE"
}

# ray_cluster_srun_cmd NODE: the array RAY_SRUN, an srun prefix for one task on NODE that shares the job's
# resources with the other steps. Callers run "${RAY_SRUN[@]}" CMD… themselves, so that `… &` makes $! the
# srun process (SIGTERM to srun reaches the task), not a subshell around it.
ray_cluster_srun_cmd() {
  local extra=()
  # shellcheck disable=SC2206  # site-specific srun options, word-split on purpose
  if [[ -n "${RAY_SRUN_ARGS:-}" ]]; then extra=($RAY_SRUN_ARGS); fi
  RAY_SRUN=(srun --overlap --export=ALL --nodes=1 --ntasks=1 -w "$1" "${extra[@]}")
}

# ray_cluster_start: `ray start --block` on every node, in the background, head first.
ray_cluster_start() {
  RAY_PORT="${RAY_PORT:-6379}"
  RAY_GPUS_PER_NODE="$(saferl_gpus_per_node)"
  RAY_CPUS_PER_NODE="$(saferl_cpus_per_node)"
  RAY_ADDRESS_HEAD="$RAY_HEAD_IP:$RAY_PORT"
  # Fast teardown: a SIGTERMed `ray start --block` otherwise drains for up to 30 s first (for Ray Serve).
  export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}"
  trap ray_cluster_teardown EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT

  local common=(--num-cpus="$RAY_CPUS_PER_NODE" --num-gpus="$RAY_GPUS_PER_NODE" --disable-usage-stats --block)
  if [[ -n "${RAY_TEMP_DIR:-}" ]]; then common+=(--temp-dir="$RAY_TEMP_DIR"); fi
  local extra=() head_extra=()
  # shellcheck disable=SC2206  # extra `ray start` options, word-split on purpose
  if [[ -n "${RAY_START_ARGS:-}" ]]; then extra=($RAY_START_ARGS); fi
  # shellcheck disable=SC2206
  if [[ -n "${RAY_HEAD_START_ARGS:-}" ]]; then head_extra=($RAY_HEAD_START_ARGS); fi

  # Ray's system config is the head's, for the whole cluster: by default what saferl's own ray.init sets
  # (ray_kwargs.ray_init._system_config in conf/base.yaml, 1 MiB: one rollout request with its images, one message).
  local default_system_config='{"max_direct_call_object_size": 1048576}'
  local system_config="${RAY_SYSTEM_CONFIG-$default_system_config}"
  if [[ -n "$system_config" ]]; then head_extra=(--system-config="$system_config" "${head_extra[@]}"); fi

  local n=${#RAY_CLUSTER_NODES[@]}
  rc_log "head $RAY_HEAD_NODE ($RAY_ADDRESS_HEAD), $n node(s): ${RAY_CLUSTER_NODES[*]};" \
    "per node: $RAY_CPUS_PER_NODE CPU, $RAY_GPUS_PER_NODE GPU"
  ray_cluster_srun_cmd "$RAY_HEAD_NODE"
  "${RAY_SRUN[@]}" ray start --head --node-ip-address="$RAY_HEAD_IP" --port="$RAY_PORT" \
    "${common[@]}" "${extra[@]}" "${head_extra[@]}" &
  RAY_CLUSTER_PIDS+=($!)
  rc_log "started head on $RAY_HEAD_NODE (step pid $!)"

  # The workers need the head's GCS listening; a worker started too early gives up after a timeout.
  ray_cluster_wait_port "$RAY_HEAD_IP" "$RAY_PORT" "${RAY_WAIT_TIMEOUT:-300}"

  local i
  for ((i = 1; i < n; i++)); do
    local node_ip
    node_ip="$(ray_cluster_node_ip "${RAY_CLUSTER_NODES[i]}")" || exit 1
    ray_cluster_srun_cmd "${RAY_CLUSTER_NODES[i]}"
    # Each worker names its own address too: left to guess, Ray may pick a loopback or a wrong NIC.
    "${RAY_SRUN[@]}" ray start --address="$RAY_ADDRESS_HEAD" --node-ip-address="$node_ip" \
      "${common[@]}" "${extra[@]}" &
    RAY_CLUSTER_PIDS+=($!)
    rc_log "started worker $i on ${RAY_CLUSTER_NODES[i]} (step pid $!)"
  done
}

# ray_cluster_check_steps: fail at once if a `ray start --block` step has already ended.
ray_cluster_check_steps() {
  local i
  for i in "${!RAY_CLUSTER_PIDS[@]}"; do
    kill -0 "${RAY_CLUSTER_PIDS[i]}" 2>/dev/null ||
      saferl_die "ray start on ${RAY_CLUSTER_NODES[i]} exited early (see its output above)"
  done
}

# ray_cluster_wait_port HOST PORT TIMEOUT: until HOST:PORT accepts TCP connections.
ray_cluster_wait_port() {
  local host="$1" port="$2" timeout="$3" start=$SECONDS
  until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
    ray_cluster_check_steps
    ((SECONDS - start < timeout)) || saferl_die "Ray head $host:$port not listening after ${timeout}s"
    sleep 1
  done
  rc_log "head GCS listening on $host:$port after $((SECONDS - start))s"
}

# The node count check, as one Python process on the head: connect once, then poll ray.nodes().
RAY_CLUSTER_WAIT_PY='
import sys, time
import ray
address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
alive = []
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want or time.monotonic() > deadline:
        break
    time.sleep(1)
for n in alive:
    res = n["Resources"]
    host, ip = n["NodeManagerHostname"], n["NodeManagerAddress"]
    cpu, gpu, head = res.get("CPU", 0), res.get("GPU", 0), "node:__internal_head__" in res
    print(f"  node {host} {ip}: CPU={cpu:g} GPU={gpu:g} head={head}", flush=True)
print(f"ray cluster: {len(alive)}/{want} nodes alive", flush=True)
ray.shutdown()
sys.exit(0 if len(alive) >= want else 1)
'

# ray_cluster_wait: until all nodes are alive in the cluster, or fail clearly after RAY_WAIT_TIMEOUT.
ray_cluster_wait() {
  local want=${#RAY_CLUSTER_NODES[@]} timeout="${RAY_WAIT_TIMEOUT:-300}" start=$SECONDS
  rc_log "waiting up to ${timeout}s for $want node(s) to join $RAY_ADDRESS_HEAD"
  ray_cluster_srun_cmd "$RAY_HEAD_NODE"
  "${RAY_SRUN[@]}" "${SAFERL_PYTHON:-python}" -c "$RAY_CLUSTER_WAIT_PY" \
    "$RAY_ADDRESS_HEAD" "$want" "$timeout" &
  local waiter=$!
  while kill -0 "$waiter" 2>/dev/null; do
    if ! ray_cluster_check_steps_quiet; then
      kill "$waiter" 2>/dev/null || true
      wait "$waiter" 2>/dev/null || true
      ray_cluster_check_steps
    fi
    if ((SECONDS - start > timeout + 60)); then
      kill "$waiter" 2>/dev/null || true
      saferl_die "the node check did not finish in $((timeout + 60))s"
    fi
    sleep 1
  done
  wait "$waiter" || saferl_die "the Ray cluster did not reach $want alive node(s) in ${timeout}s"
  rc_log "all $want node(s) joined after $((SECONDS - start))s"
}

ray_cluster_check_steps_quiet() {
  local pid
  for pid in "${RAY_CLUSTER_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || return 1
  done
}

# ray_cluster_run_driver CMD…: the driver, on the head, sharing its resources; returns its exit status.
ray_cluster_run_driver() {
  rc_log "driver on $RAY_HEAD_NODE: $*"
  local rc=0
  ray_cluster_srun_cmd "$RAY_HEAD_NODE"
  "${RAY_SRUN[@]}" "$@" || rc=$?
  rc_log "driver exited with status $rc"
  return "$rc"
}

# ray_cluster_teardown (EXIT trap): SIGTERM each `ray start --block` step, which stops the Ray processes
# it started (its own, and only those); then, unless RAY_STOP_ON_EXIT=0, `ray stop` on every node for
# strays. `ray stop` kills every Ray process of the user on that host, which is right on nodes the job
# holds exclusively (#SBATCH --exclusive), and wrong on a shared machine: there, set RAY_STOP_ON_EXIT=0.
ray_cluster_teardown() {
  local rc=$?
  trap - EXIT TERM INT
  set +e
  rc_log "teardown: stopping ${#RAY_CLUSTER_PIDS[@]} Ray node(s)"
  local pid i start=$SECONDS timeout="${RAY_STOP_TIMEOUT:-60}"
  # Workers first, then the head, so no worker sees its GCS vanish before it is told to stop.
  for ((i = ${#RAY_CLUSTER_PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${RAY_CLUSTER_PIDS[i]}" 2>/dev/null
  done
  for pid in "${RAY_CLUSTER_PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS - start < timeout)); do sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
      rc_log "step pid $pid still running after ${timeout}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
  done
  if [[ "${RAY_STOP_ON_EXIT:-1}" == 1 ]]; then
    for i in "${!RAY_CLUSTER_NODES[@]}"; do
      ray_cluster_srun_cmd "${RAY_CLUSTER_NODES[i]}"
      "${RAY_SRUN[@]}" ray stop --grace-period 10 >/dev/null 2>&1 &
    done
    wait
  fi
  rc_log "teardown done after $((SECONDS - start))s (exit status $rc)"
  exit "$rc"
}
