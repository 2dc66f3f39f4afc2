#!/usr/bin/env bash
# Entry point of a training pod that a Kubernetes JobSet restarts (launch/gke_xpk.sh).
#
#   launch/jobset_entry.sh glmvoice-train --config=... --workdir=gs://... --distributed [...]
#
# Runs the command as a child, forwards SIGTERM / SIGINT to it, and turns "stopped by a signal"
# into exit code 42 (GLMVOICE_RESTART_EXIT_CODE). Why: glmvoice-train answers SIGTERM by saving a
# checkpoint and exiting 0, which is right for a person stopping a run but would mark the pod
# Succeeded after a spot preemption or a maintenance eviction. xpk's JobSet restarts the whole
# workload (up to --max-restarts) when a pod exits 42 or 127-255, and fails it for any other
# non-zero code (a bug does not fix itself by restarting); every restarted pod runs the same
# command, and glmvoice-train resumes from WORKDIR/checkpoints. A run that reaches total_steps
# exits 0 and the JobSet completes. Deleting the workload (`xpk workload delete`) deletes the
# JobSet, so nothing restarts it.
set -u

RESTART_CODE="${GLMVOICE_RESTART_EXIT_CODE:-42}"
if [[ $# -eq 0 ]]; then
  echo "jobset_entry.sh: no command given; usage: jobset_entry.sh glmvoice-train ARGS..." >&2
  exit 2
fi

stopped="" child=""
forward() {
  stopped="$1"
  if [[ -n "$child" ]]; then kill -s "$1" "$child" 2>/dev/null; fi
}
# Traps first: a SIGTERM that lands while the child starts is forwarded, not fatal to the entry.
trap 'forward TERM' TERM
trap 'forward INT' INT
"$@" &
child=$!
if [[ -n "$stopped" ]]; then kill -s "$stopped" "$child" 2>/dev/null; fi

# `wait` returns early (status > 128) when a trapped signal arrives; wait again until the child
# itself has exited, so its own exit status is the one reported.
while true; do
  wait "$child"
  rc=$?
  if ! kill -0 "$child" 2>/dev/null; then
    break
  fi
done

if [[ -n "$stopped" && $rc == 0 ]]; then
  echo "jobset_entry.sh: stopped by SIG$stopped after the trainer saved; exit $RESTART_CODE so" \
    "the JobSet restarts the workload and it resumes from its checkpoints" >&2
  exit "$RESTART_CODE"
fi
exit "$rc"
