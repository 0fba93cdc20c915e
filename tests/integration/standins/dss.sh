#!/bin/bash
# Stand-in for Dataiku DSS's DATA_DIR/bin/dss, installed as INSTALL_DIR/bin/dss and reached
# through the symlink DATA_DIR/bin/dss (see README.md). DATA_DIR is the parent of the
# directory it was called from; INSTALL_DIR is where the symlink really points. A real
# detached process stands in for DSS (pid in DATA_DIR/run/supervisord.pid). `start` refuses
# while DATA_DIR's version differs from the installation's (the installer's -u migrates it).
set -u
EVENTS='@EVENTS@'
data_dir=$(cd "$(dirname "$0")/.." && pwd -P)
install_dir=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd -P)

ev() { printf '%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "$(id -un)" "$1" "${2:-}" >>"$EVENTS" 2>/dev/null || true; }
refuse() { echo "dss: $2" >&2; ev refused "dss ${cmd:-}: $2"; exit "$1"; }
version_of() { sed -n 's/.*"product_version"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$1" 2>/dev/null | head -n1; }

cmd=${1:-}
[ -f "$data_dir/install.ini" ] || refuse 2 "$data_dir is not a DSS data directory: call DATA_DIR/bin/dss"
cd "$data_dir" || exit 1
marker="dss-standin-server $data_dir"

pid_running() {
  local pid
  pid=$(cat run/supervisord.pid 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$marker" || return 1
  echo "$pid"
}

case "$cmd" in
  start)
    if pid=$(pid_running); then refuse 1 "DSS is already running (pid $pid)"; fi
    data_version=$(version_of dss-version.json)
    kit_version=$(version_of "$install_dir/dss-version.json")
    [ -n "$data_version" ] || refuse 1 "cannot read product_version from $data_dir/dss-version.json"
    if [ "$data_version" != "$kit_version" ]; then
      refuse 1 "DATA_DIR version $data_version does not match installed DSS $kit_version: run $install_dir/installer.sh -d $data_dir -u"
    fi
    mkdir -p run
    rm -f run/supervisord.pid
    setsid -f bash -c 'exec -a "$0" bash "$1" __serve' "$marker" "$data_dir/bin/dss" \
      </dev/null >>run/supervisord.log 2>&1
    for _ in $(seq 200); do
      if pid=$(pid_running); then ev dss-started "$pid"; echo "DSS started, pid=$pid"; exit 0; fi
      sleep 0.05
    done
    refuse 1 "DSS did not start: see run/supervisord.log"
    ;;
  __serve)
    echo $$ >run/supervisord.pid
    echo "$(date) dss $$ up"
    sleep_pid=
    trap 'kill $sleep_pid 2>/dev/null; rm -f run/supervisord.pid; echo "$(date) dss $$ down"; exit 0' TERM INT
    while :; do sleep 3600 & sleep_pid=$!; wait $sleep_pid; done
    ;;
  stop)
    if ! pid=$(pid_running); then ev dss-stop-noop; echo "dss: not running"; exit 0; fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 600); do
      [ -d "/proc/$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$marker" || break
      sleep 0.05
    done
    if pid_running >/dev/null; then kill -KILL "$pid" 2>/dev/null; rm -f run/supervisord.pid; fi
    # Stopping DSS kills the jobs it was running: they end up aborted.
    for running in jobs/*/*/RUNNING; do
      [ -e "$running" ] || continue
      job=$(dirname "$running")
      mv "$running" "$job/ABORTED"
      ev job-aborted "${job#jobs/}"
    done
    ev dss-stopped "$pid"
    echo "dss: stopped"
    ;;
  status)
    if pid=$(pid_running); then echo "dss: RUNNING pid $pid"; exit 0; fi
    echo "dss: NOT RUNNING"
    exit 1
    ;;
  *)
    refuse 2 "unknown command '$cmd' (stand-in knows start, stop, status)"
    ;;
esac
exit 0
