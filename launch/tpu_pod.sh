#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: the same glmvoice-train command on every worker.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE --workdir gs://BUCKET/run --config configs/X.py \
#       [--project P] [--skip_setup] [--dry_run] [-- EXTRA glmvoice-train flags]
#
# 1. setup (once per VM, skipped with --skip_setup): pack this checkout, copy it to every worker,
#    create ~/glmvoice_jax/.venv there and `pip install -e .[tpu] gcsfs`;
# 2. train: start `glmvoice-train --distributed` on all workers in the background (nohup, so a
#    dropped ssh session does not kill it). Each worker is one JAX process; jax.distributed finds
#    the others from the TPU VM metadata (glmvoice_jax/distributed.py).
#
# Checkpoints go to WORKDIR/checkpoints (gs:// is written natively by Orbax); metrics and
# TensorBoard files of process 0 go to /tmp/glmvoice_logs/... on worker 0 (lm.log_dir).
# Preemption / maintenance: the SIGTERM makes every worker save the same step and exit 0; rerun
# this script with --skip_setup (same --workdir) to resume, on the same or another slice size.
# --dry_run prints every command instead of running it.
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
TRAIN_CMD="cd ~/glmvoice_jax && nohup$(printf ' %q' "${TRAIN[@]}") > ~/glmvoice_train.log 2>&1 &"
run "${GCLOUD[@]}" ssh "$TPU" --worker=all "${WHERE[@]}" --command="$TRAIN_CMD"
echo "started on every worker of $TPU; follow process 0 with:"
echo "  ${GCLOUD[*]} ssh $TPU --worker=0 ${WHERE[*]} --command='tail -f ~/glmvoice_train.log'"
