#!/usr/bin/env bash
# Train on TPU slices of a GKE cluster through xpk (one JobSet, one pod per TPU VM host), with
# automatic resume after preemption.
#
#   launch/gke_xpk.sh --cluster C --workload NAME --tpu_type v5p-512 --workdir gs://BUCKET/run \
#       --config configs/X.py [--num_slices 1] [--max_restarts 50] [--grace_seconds 300]
#       [--project P] [--zone Z] [--docker_image IMAGE] [--dry_run] [-- EXTRA glmvoice-train flags]
#
# Without --docker_image, xpk builds an image from python:3.11-slim plus this checkout
# (--script-dir) and each pod installs the package with the tpu extra before training; with it,
# the image must already hold glmvoice_jax[tpu] and this checkout at /app. GKE sets
# TPU_WORKER_HOSTNAMES and, for several slices, MEGASCALE_* on every pod: jax.distributed reads
# them (glmvoice_jax/distributed.py) and across slices the mesh puts the data axis on DCN
# (distributed.make_mesh).
# Resume without a person: each pod runs the trainer through launch/jobset_entry.sh. A
# preemption or eviction SIGTERMs every pod; the trainers save the same step, and the entry turns
# that stop into exit 42, for which the JobSet recreates all pods (at most --max_restarts times,
# xpk --max-restarts); the new pods resume from WORKDIR/checkpoints. --grace_seconds is the pods'
# termination grace period, the time the SIGTERM save has (a spot node gives at most ~30 s
# whatever it says: keep ckpt.every_steps small enough to lose little when that save is cut
# short). A finished run exits 0 and the JobSet completes; a crash (exit 1) fails it, without
# restarts. Metrics and TensorBoard events are copied to WORKDIR by process 0 (metrics.py).
# By hand: `xpk workload delete` stops it for good; resubmitting the same command (a new
# --workload name) resumes, with any --num_slices or --tpu_type (docs/elastic_resume.md).
# --dry_run prints the xpk command instead of running it; nothing is submitted.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="" WORKLOAD="" TPU_TYPE="" WORKDIR="" CONFIG="" NUM_SLICES=1 PROJECT="" ZONE=""
IMAGE="" DRY_RUN=0 MAX_RESTARTS=50 GRACE_SECONDS=300
EXTRA=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit "${1:-2}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --cluster) CLUSTER="$2"; shift 2 ;;
    --workload) WORKLOAD="$2"; shift 2 ;;
    --tpu_type) TPU_TYPE="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --num_slices) NUM_SLICES="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --docker_image) IMAGE="$2"; shift 2 ;;
    --max_restarts) MAX_RESTARTS="$2"; shift 2 ;;
    --grace_seconds) GRACE_SECONDS="$2"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "gke_xpk.sh: unknown argument $1" >&2; usage ;;
  esac
done
for v in CLUSTER WORKLOAD TPU_TYPE WORKDIR CONFIG; do
  if [[ -z "${!v}" ]]; then
    echo "gke_xpk.sh: --$(echo "$v" | tr '[:upper:]' '[:lower:]') is required" >&2
    usage
  fi
done
if [[ "$WORKDIR" != gs://* ]]; then
  echo "gke_xpk.sh: --workdir must be a gs:// path (pods have no shared disk); got $WORKDIR" >&2
  exit 2
fi

show() {
  local out="+" w
  for w in "$@"; do
    if [[ "$w" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=" $w"; else out+=" '${w//\'/\'\\\'\'}'"; fi
  done
  echo "$out"
}
run() { if [[ $DRY_RUN == 1 ]]; then show "$@"; else "$@"; fi; }

TRAIN=(glmvoice-train "--config=$CONFIG" "--workdir=$WORKDIR" --distributed "${EXTRA[@]}")
# exec: the entry, not a shell, receives the pod's SIGTERM and forwards it to the trainer.
ENTRY="exec bash launch/jobset_entry.sh$(printf ' %q' "${TRAIN[@]}")"
if [[ -n "$IMAGE" ]]; then
  IMAGE_ARGS=(--docker-image="$IMAGE")
  COMMAND="cd /app && $ENTRY"
else
  IMAGE_ARGS=(--base-docker-image=python:3.11-slim --script-dir="$REPO")
  COMMAND="pip install -q -e '.[tpu]' gcsfs && $ENTRY"
fi
XPK=(xpk workload create --cluster="$CLUSTER" --workload="$WORKLOAD" --tpu-type="$TPU_TYPE"
  --num-slices="$NUM_SLICES" --max-restarts="$MAX_RESTARTS"
  --termination-grace-period-seconds="$GRACE_SECONDS" "${IMAGE_ARGS[@]}" --command="$COMMAND")
if [[ -n "$PROJECT" ]]; then XPK+=(--project="$PROJECT"); fi
if [[ -n "$ZONE" ]]; then XPK+=(--zone="$ZONE"); fi
run "${XPK[@]}"
if [[ $DRY_RUN == 1 ]]; then
  echo "dry run: would submit workload $WORKLOAD to cluster $CLUSTER (nothing submitted)"
else
  echo "submitted workload $WORKLOAD; it restarts and resumes by itself after a preemption"
  echo "  (up to $MAX_RESTARTS times). Follow: xpk workload list --cluster=$CLUSTER"
fi
