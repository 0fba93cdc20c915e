#!/bin/bash
# Stand-in for DATA_DIR/bin/dsscli with one command, `running-jobs`: a ready-made `jobs_check`
# for the dss recipe. It lists the jobs marked running (DATA_DIR/jobs/<PROJECT>/<JOB>/RUNNING)
# and exits 1 while any runs, 0 when none does; like the real dsscli it needs DSS running
# (exit 2 otherwise), because it asks the backend.
set -u
EVENTS='@EVENTS@'
data_dir=$(cd "$(dirname "$0")/.." && pwd -P)
ev() { printf '%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "$(id -un)" "$1" "${2:-}" >>"$EVENTS" 2>/dev/null || true; }

case "${1:-}" in
  running-jobs)
    if ! "$data_dir/bin/dss" status >/dev/null 2>&1; then
      echo "dsscli: cannot reach the DSS backend (DSS is not running)" >&2
      ev dsscli-refused "backend down"
      exit 2
    fi
    cd "$data_dir" || exit 2
    n=0
    for running in jobs/*/*/RUNNING; do
      [ -e "$running" ] || continue
      job=$(dirname "$running")
      echo "${job#jobs/}"
      n=$((n + 1))
    done
    ev dsscli-running-jobs "$n"
    [ "$n" -eq 0 ] || exit 1
    ;;
  *)
    echo "dsscli: unknown command '${1:-}' (stand-in knows running-jobs)" >&2
    exit 2
    ;;
esac
