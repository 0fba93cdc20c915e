#!/usr/bin/env bash
# Stand-in for deisctl (seed 003): records each call in $R/events.log (never a key), prints the
# gateway keys of $R/gateway.env, and on `start platform` boots the "database" the way
# deis-database does on a fresh cluster: it fetches its newest base backup from db_wal.
set -euo pipefail
R=$(cd "$(dirname "$0")/.." && pwd)
. "$R/gateway.env"
ev() { printf 'deisctl %s\n' "$*" >> "$R/events.log"; }
case "${1:-} ${2:-}" in
  "config store")
    [ "${3:-}" = get ] || { echo "deisctl: config store $3: unsupported" >&2; exit 2; }
    ev "$@"
    case "${4:-}" in
      gateway/accessKey) printf '%s\n' "$ACCESS" ;;
      gateway/secretKey) printf '%s\n' "$SECRET" ;;
      *) echo "deisctl: no key $4" >&2; exit 1 ;;
    esac ;;
  "install platform"|"config router") ev "$@" ;;
  "start platform")
    ev "$@"
    "$PY" "$R/bin/dbboot.py" ;;
  "start "*) ev "$@" ;;
  *) echo "deisctl stand-in: unknown command: $*" >&2; exit 2 ;;
esac
