#!/bin/bash
# Stand-in for Looker's startup script, installed as {home}/looker/looker (see README.md).
# Like the real one it works in "$HOME/looker" (so callers must give the right HOME), keeps
# the server's pid in .tmp/looker.pid and answers `status` with 0 (running) or 7 (stopped).
# A real detached process stands in for the JVM. Every call is appended to the events file.
set -u
EVENTS='@EVENTS@'
self_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)

ev() { printf '%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "$(id -un)" "$1" "${2:-}" >>"$EVENTS" 2>/dev/null || true; }
refuse() { echo "looker: $2" >&2; ev refused "${cmd:-}: $2"; exit "$1"; }

cmd=${1:-}
if [ -z "${HOME:-}" ] || ! cd "$HOME/looker" 2>/dev/null || [ "$(pwd -P)" != "$self_dir" ]; then
  refuse 2 "\$HOME/looker is not $self_dir (the script runs in \$HOME/looker): run it with HOME=$(dirname "$self_dir")"
fi

marker="looker-standin-server $self_dir"

pid_running() {  # pid of the running server, or fail
  local pid
  pid=$(cat .tmp/looker.pid 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$marker" || return 1
  echo "$pid"
}

read_cmk() {  # the CMK as Looker would get it (file first), or refuse
  if [ -n "${LKR_MASTER_KEY_FILE:-}" ]; then
    [ -r "$LKR_MASTER_KEY_FILE" ] || refuse 1 "cannot read the CMK file named by LKR_MASTER_KEY_FILE"
    cmk=$(cat "$LKR_MASTER_KEY_FILE")
  elif [ -n "${LKR_MASTER_KEY_ENV:-}" ]; then
    cmk=$LKR_MASTER_KEY_ENV
  else
    refuse 1 "no CMK: set LKR_MASTER_KEY_FILE (or LKR_MASTER_KEY_ENV)"
  fi
  [ -n "$cmk" ] || refuse 1 "the CMK is empty"
  # .db/kek stands for the KEK encrypted with the CMK: only the right CMK "decrypts" it.
  local check
  check=$(printf 'kek:%s' "$cmk" | sha256sum | cut -d' ' -f1)
  [ "$check" = "$(cat .db/kek 2>/dev/null)" ] || refuse 1 "cannot decrypt the KEK in .db with this CMK"
}

require_stopped() {
  local pid
  if pid=$(pid_running); then refuse 1 "Looker is running (pid $pid): stop it first (./looker stop)"; fi
}

keyfile_re='^\{"dbmk":"([A-Za-z0-9+/]{43}=)\\n","backup_uid":"([A-Za-z0-9+/]{22}==)"\}$'

case "$cmd" in
  start)
    if [ -e .deploying ]; then
      refuse 1 "Startup suppressed: $PWD/.deploying file exists. Remove .deploying file to allow startup"
    fi
    if pid=$(pid_running); then refuse 1 "Looker is already running (pid $pid)"; fi
    mkdir -p .tmp log .db
    rm -f .tmp/looker.pid
    setsid -f bash -c 'exec -a "$0" bash "$1" __serve' "$marker" "$self_dir/looker" \
      </dev/null >>log/looker.log 2>&1
    for _ in $(seq 200); do
      if pid=$(pid_running); then ev started "$pid"; echo "Looker started (pid $pid)"; exit 0; fi
      sleep 0.05
    done
    refuse 1 "Looker did not start: see log/looker.log"
    ;;
  __serve)  # the "JVM": holds the H2 lock file, exits cleanly on SIGTERM
    echo $$ >.tmp/looker.pid
    echo $$ >.db/looker.lck
    echo "$(date) server $$ up"
    sleep_pid=
    trap 'kill $sleep_pid 2>/dev/null; rm -f .tmp/looker.pid; echo "$(date) server $$ down"; exit 0' TERM INT
    while :; do sleep 3600 & sleep_pid=$!; wait $sleep_pid; done
    ;;
  stop)
    if ! pid=$(pid_running); then ev stop-noop; echo "Looker is not running"; exit 0; fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 600); do
      [ -d "/proc/$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$marker" || break
      sleep 0.05
    done
    if pid_running >/dev/null; then kill -KILL "$pid" 2>/dev/null; rm -f .tmp/looker.pid; fi
    ev stopped "$pid"
    echo "Looker stopped"
    ;;
  status)
    if pid=$(pid_running); then echo "Status:Looker Web Application running"; exit 0; fi
    echo "Status:Looker Web Application stopped"
    exit 7
    ;;
  generate_keyfile_for_backup)
    [ $# -eq 2 ] && [ -n "$2" ] || refuse 2 "usage: ./looker generate_keyfile_for_backup <key_file_name>"
    require_stopped
    read_cmk
    dbmk=$(head -c 32 /dev/urandom | base64 -w0)
    uid=$(head -c 16 /dev/urandom | base64 -w0)
    (umask 077 && printf '{"dbmk":"%s\\n","backup_uid":"%s"}' "$dbmk" "$uid" >"$2") \
      || refuse 1 "cannot write $2"
    chmod 600 "$2"
    ev keyfile-generated "$uid"
    echo "Wrote key file $2"
    ;;
  keystore_independent_recrypt)
    [ $# -eq 2 ] && [ -n "$2" ] || refuse 2 "usage: ./looker keystore_independent_recrypt <key_file_name>"
    require_stopped
    [ -r "$2" ] || refuse 1 "cannot read key file $2"
    content=$(cat "$2")
    [[ $content =~ $keyfile_re ]] || refuse 1 "$2 is not a key file written by generate_keyfile_for_backup"
    dbmk=${BASH_REMATCH[1]}
    uid=${BASH_REMATCH[2]}
    [ "$(printf '%s' "$dbmk" | base64 -d 2>/dev/null | wc -c)" -eq 32 ] || refuse 1 "$2: dbmk is not a 256-bit key"
    read_cmk
    # The KEK, re-encrypted with the new key, persisted in the internal database: recorded as
    # the backup_uid and a hash of the key (never the key itself).
    printf '%s %s\n' "$uid" "$(printf '%s' "$dbmk" | sha256sum | cut -d' ' -f1)" >>.db/keystore_independent
    ev recrypted "$uid"
    echo "Re-encrypted the KEK with the key in $2"
    ;;
  *)
    refuse 2 "unknown command '$cmd' (stand-in knows start, stop, status, generate_keyfile_for_backup, keystore_independent_recrypt)"
    ;;
esac
exit 0
