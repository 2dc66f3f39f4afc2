#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: the same glmvoice-train command on every worker.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE --workdir gs://BUCKET/run --config configs/X.py \
#       [--project P] [--skip_setup] [--dry_run] [-- EXTRA glmvoice-train flags]
#
# 1. setup (every run unless --skip_setup): pack this checkout, copy it to every worker, create
#    ~/glmvoice_jax/.venv there and `pip install -e .[tpu] gcsfs`;
# 2. train: start `glmvoice-train --distributed` on all workers in the background (nohup, so a
#    dropped ssh session does not kill it). Each worker is one JAX process; jax.distributed finds
#    the others from the TPU VM metadata (glmvoice_jax/distributed.py).
#
# Everything a run leaves is in WORKDIR: checkpoints in WORKDIR/checkpoints (gs:// is written
# natively by Orbax); metrics.jsonl and TensorBoard events are written by process 0 under
# $GLMVOICE_LOGDIR (/tmp/glmvoice_logs) on worker 0 and copied to WORKDIR every 60 s and at exit
# (glmvoice_jax/metrics.py), so `tensorboard --logdir WORKDIR/tensorboard` works from anywhere.
# Stop / resume: SIGTERM (maintenance, `gcloud ... ssh --command='pkill -TERM -f glmvoice-train'`)
# makes every worker save the same step and exit 0. Resume = rerun this script with the same
# --workdir, on the same or another slice size. After a spot / preemptible slice was preempted,
# the slice you get back is new VMs with empty disks: run the full script (setup included), NOT
# --skip_setup. --skip_setup only restarts training on VMs that this script already set up (a
# worker without the venv refuses to start and says so).
# --dry_run prints every command instead of running it; nothing is started.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TPU="" ZONE="" PROJECT="" WORKDIR="" CONFIG="" DRY_RUN=0 SETUP=1
EXTRA=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit "${1:-2}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --skip_setup) SETUP=0; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown argument $1" >&2; usage ;;
  esac
done
for v in TPU ZONE WORKDIR CONFIG; do
  if [[ -z "${!v}" ]]; then
    echo "tpu_pod.sh: --$(echo "$v" | tr '[:upper:]' '[:lower:]') is required" >&2
    usage
  fi
done

# Prints a command so it can be pasted into a shell: words with special characters single-quoted.
show() {
  local out="+" w
  for w in "$@"; do
    if [[ "$w" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=" $w"; else out+=" '${w//\'/\'\\\'\'}'"; fi
  done
  echo "$out"
}
run() { if [[ $DRY_RUN == 1 ]]; then show "$@"; else "$@"; fi; }

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then WHERE+=(--project="$PROJECT"); fi

if [[ $SETUP == 1 ]]; then
  TARBALL="${TMPDIR:-/tmp}/glmvoice_src.tgz"
  run tar -czf "$TARBALL" --exclude=./.venv --exclude=./runs --exclude=./.git -C "$REPO" .
  run "${GCLOUD[@]}" scp "$TARBALL" "$TPU:glmvoice_src.tgz" --worker=all "${WHERE[@]}"
  SETUP_CMD="set -e; rm -rf ~/glmvoice_jax && mkdir -p ~/glmvoice_jax"
  SETUP_CMD+=" && tar -xzf ~/glmvoice_src.tgz -C ~/glmvoice_jax && cd ~/glmvoice_jax"
  SETUP_CMD+=" && python3 -m venv .venv && .venv/bin/pip install -q -U pip"
  SETUP_CMD+=" && .venv/bin/pip install -q -e '.[tpu]' gcsfs"
  run "${GCLOUD[@]}" ssh "$TPU" --worker=all "${WHERE[@]}" --command="$SETUP_CMD"
fi

TRAIN=(.venv/bin/glmvoice-train "--config=$CONFIG" "--workdir=$WORKDIR" --distributed "${EXTRA[@]}")
# A worker without the venv (new VMs after a preemption, run with --skip_setup) fails loudly
# instead of leaving the other workers waiting for it in jax.distributed.
NO_SETUP="tpu_pod.sh: \$(hostname) has no ~/glmvoice_jax/.venv (new VMs after a preemption?):"
NO_SETUP+=" rerun launch/tpu_pod.sh without --skip_setup"
TRAIN_CMD="test -x ~/glmvoice_jax/.venv/bin/glmvoice-train || { echo \"$NO_SETUP\" >&2; exit 3; }"
TRAIN_CMD+="; cd ~/glmvoice_jax && nohup$(printf ' %q' "${TRAIN[@]}") > ~/glmvoice_train.log 2>&1 &"
run "${GCLOUD[@]}" ssh "$TPU" --worker=all "${WHERE[@]}" --command="$TRAIN_CMD"
if [[ $DRY_RUN == 1 ]]; then
  echo "dry run: would start training on every worker of $TPU (nothing started); follow with:"
else
  echo "started on every worker of $TPU; follow process 0 with:"
fi
echo "  ${GCLOUD[*]} ssh $TPU --worker=0 ${WHERE[*]} --command='tail -f ~/glmvoice_train.log'"
