#!/usr/bin/env bash
# A real Slurm for the sharding test: starts a private single-node cluster (munged,
# slurmctld, slurmd from Debian's slurm-wlm and munge, own config, ports and state under
# WORK), submits examples/slurm/segment-array.sbatch as a 3-task array with
# --shard auto --resume, waits for it, requeues task 1 (scontrol requeue; it must reuse
# its outputs), runs `cosam report merge`, and stops what it started. Called by tests/shard.rs (slurm_array_job_writes_what_one_process_writes).
#
#   tests/slurm/run.sh COSAM_BIN WORK OUTPUT INPUT [cosam segment flags...]
#
# Exit 0: the array ran and the merge exited 0; 77: skipped (not root, or the packages
# are missing, and COSAM_TEST_SLURM is unset); anything else: failure (logs printed).
set -euo pipefail

cosam=$1 work=$2 output=$3 input=$4
shift 4
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

skip() {
  if [ -n "${COSAM_TEST_SLURM:-}" ]; then
    echo "slurm test: cannot run ($1) but COSAM_TEST_SLURM is set" >&2
    exit 1
  fi
  echo "slurm test skipped: $1 (set COSAM_TEST_SLURM=1 to make this a failure)" >&2
  exit 77
}
[ "$(id -u)" = 0 ] || skip "needs root to start slurmd and munged"
for b in munged slurmctld slurmd sbatch squeue scontrol; do
  command -v "$b" >/dev/null 2>&1 || skip "$b not found (apt-get install slurm-wlm munge)"
done

mkdir -p "$work"/{etc,state,spool,log,munge}
chmod 700 "$work/munge"
started=()
cleanup() {
  local rc=$?
  # stop only the daemons this script started, by their pid files
  for pidfile in "${started[@]}"; do
    if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
    for f in "$work"/log/*; do echo "--- $f"; tail -n 40 "$f"; done >&2
  fi
  exit $rc
}
trap cleanup EXIT

# munge: a private daemon with its own key and socket (the system's, if any, is left alone)
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"
munged --force \
  --key-file="$work/munge/munge.key" \
  --socket="$work/munge/munge.socket" \
  --pid-file="$work/munge/munged.pid" \
  --log-file="$work/log/munged.log" \
  --seed-file="$work/munge/munged.seed"
started+=("$work/munge/munged.pid")

# free ports, so that a system Slurm (or a second test) does not collide
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ctld_port=$(port)
slurmd_port=$(port)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2/1024/2)}' /proc/meminfo)
conf="$work/etc/slurm.conf"
cat >"$conf" <<CONF
ClusterName=cosamtest
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF="$conf"

slurmctld -f "$conf" -i
started+=("$work/slurmctld.pid")
slurmd -f "$conf" -N localhost
started+=("$work/slurmd.pid")

# wait until the node is idle
for _ in $(seq 1 60); do
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)
  [ "$state" = idle ] && break
  sleep 1
done
if [ "$state" != idle ]; then
  echo "slurm test: the node did not become idle (state '${state:-none}')" >&2
  sinfo -N -l >&2 || true
  exit 1
fi
echo "slurm test: single-node Slurm $(sinfo -V) is up (ports $ctld_port/$slurmd_port, $cpus CPUs)" >&2

# the shipped example, as a 3-task array with one CPU per task; --wait returns when the
# whole array has ended (non-zero if any task failed)
array_rc=0
jid=$(COSAM="$cosam" INPUT="$input" OUTPUT="$output" timeout 600 \
  sbatch --parsable --wait --array=0-2 --cpus-per-task=1 --mem=1G --time=00:20:00 \
  --output="$work/log/task-%A_%a.log" --open-mode=append --chdir="$repo" \
  "$repo/examples/slurm/segment-array.sbatch" "$@") || array_rc=$?
jid=${jid%%;*}
if [ $array_rc -ne 0 ]; then
  for f in "$work"/log/task-*.log; do echo "--- $f"; cat "$f"; done >&2
  echo "slurm test: the array job failed (sbatch --wait exited $array_rc)" >&2
  exit 1
fi

# requeue one finished task, as after a kill: it keeps its index (so its K/N) and, with
# --resume, reuses everything it had written
scontrol requeue "${jid}_1"
# a requeued job waits ~2 minutes before it is eligible again; let it start now
scontrol update JobId="${jid}_1" StartTime=now || true
for _ in $(seq 1 300); do
  info=$(scontrol show job "${jid}_1" -o 2>/dev/null || true)
  case "$info" in
    *"Restarts=1"*"JobState=COMPLETED"* | *"JobState=COMPLETED"*"Restarts=1"*) break ;;
    *"JobState=FAILED"* | *"JobState=CANCELLED"*) break ;;
  esac
  sleep 1
done
for f in "$work"/log/task-*.log; do echo "--- $f"; cat "$f"; done >&2
case "$info" in
  *"JobState=COMPLETED"*) ;;
  *) echo "slurm test: the requeued task did not complete: $info" >&2; exit 1 ;;
esac

"$cosam" report merge "$output" --expect-shards 3
