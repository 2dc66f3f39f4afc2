#!/usr/bin/env bash
# Train on a SLURM GPU cluster: one process per GPU, jax.distributed from the SLURM variables.
#
#   launch/slurm_gpu.sh --nodes 4 --workdir /shared/runs/run1 --config configs/X.py \
#       [--gpus_per_node 8] [--venv /shared/venv] [--partition P] [--time 48:00:00] [--dry_run]
#       [-- EXTRA glmvoice-train flags]
#
# Outside an allocation it submits itself with sbatch; inside (as the batch script) it runs
#   srun --ntasks-per-node=GPUS glmvoice-train ...
# Each task sees every GPU of its node; JAX's SLURM detection (distributed.py, method "slurm")
# takes the coordinator from the first node and gives each task the GPU of its SLURM_LOCALID.
# The venv needs `pip install -e . "jax[cuda12]"` at the repo's jax version.
# Time limit: --signal=B:USR1@600 wakes this script 10 minutes before the limit; it sends SIGTERM
# to the tasks (all processes save the same step and exit 0) and requeues the job, which resumes
# from the workdir. --dry_run prints the sbatch / srun command instead.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODES=1 GPUS=8 WORKDIR="" CONFIG="" VENV="$REPO/.venv" PARTITION="" TIME="48:00:00" DRY_RUN=0
EXTRA=()
ORIG_ARGS=()
for a in "$@"; do if [[ "$a" != --dry_run ]]; then ORIG_ARGS+=("$a"); fi; done

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit "${1:-2}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --gpus_per_node) GPUS="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --partition) PARTITION="$2"; shift 2 ;;
    --time) TIME="$2"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "slurm_gpu.sh: unknown argument $1" >&2; usage ;;
  esac
done
for v in WORKDIR CONFIG; do
  if [[ -z "${!v}" ]]; then
    echo "slurm_gpu.sh: --$(echo "$v" | tr '[:upper:]' '[:lower:]') is required" >&2
    usage
  fi
done

show() {
  local out="+" w
  for w in "$@"; do
    if [[ "$w" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=" $w"; else out+=" '${w//\'/\'\\\'\'}'"; fi
  done
  echo "$out"
}
run() { if [[ $DRY_RUN == 1 ]]; then show "$@"; else "$@"; fi; }

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  # sbatch runs a spooled copy of this script: pin the repo and venv paths for it.
  SBATCH=(sbatch --job-name=glmvoice --chdir="$REPO" --nodes="$NODES" --ntasks-per-node="$GPUS"
    --gpus-per-node="$GPUS" --time="$TIME" --signal=B:USR1@600 --requeue
    --output="$WORKDIR/slurm-%j.out")
  if [[ -n "$PARTITION" ]]; then SBATCH+=(--partition="$PARTITION"); fi
  if [[ $DRY_RUN == 0 ]]; then mkdir -p "$WORKDIR"; fi
  run "${SBATCH[@]}" "$REPO/launch/slurm_gpu.sh" --venv "$VENV" "${ORIG_ARGS[@]}"
  exit 0
fi

# Inside the allocation: one task per GPU on every node.
SRUN=(srun --ntasks-per-node="$GPUS" --kill-on-bad-exit=1
  "$VENV/bin/glmvoice-train" "--config=$CONFIG" "--workdir=$WORKDIR" "${EXTRA[@]}")
if [[ $DRY_RUN == 1 ]]; then
  show "${SRUN[@]}"
  echo "# on USR1 near the time limit: kill -TERM <srun>, then scontrol requeue $SLURM_JOB_ID"
  exit 0
fi
REQUEUE=0
on_time_limit() { REQUEUE=1; kill -TERM "$SRUN_PID" 2>/dev/null || true; }
trap on_time_limit USR1
"${SRUN[@]}" &
SRUN_PID=$!
rc=0
while true; do
  wait "$SRUN_PID" && rc=0 || rc=$?
  # A trapped signal interrupts `wait` (status > 128) while srun is still running.
  if ! kill -0 "$SRUN_PID" 2>/dev/null; then break; fi
done
if [[ $REQUEUE == 1 && $rc == 0 ]]; then scontrol requeue "$SLURM_JOB_ID"; fi
exit "$rc"
