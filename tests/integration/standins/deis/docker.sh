#!/usr/bin/env bash
# Stand-in for docker (seed 003): `docker exec [-i] [-e K=V]... CONTAINER CMD...`. The database
# container's commands run on the host (its real PostgreSQL); the controller's run with /app
# mapped to $R/app (manage.py). Each call is recorded in $R/events.log.
set -euo pipefail
R=$(cd "$(dirname "$0")/.." && pwd)
[ "${1:-}" = exec ] || { echo "docker stand-in: only exec" >&2; exit 2; }
shift
envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    -i) shift ;;
    -e) envs+=("$2"); shift 2 ;;
    *) break ;;
  esac
done
c=$1; shift
printf 'docker exec %s %s\n' "$c" "$*" >> "$R/events.log"
case "$c" in
  deis-database) cd / && exec env ${envs[@]+"${envs[@]}"} "$@" ;;
  deis-controller)
    args=()
    for a in "$@"; do args+=("${a//\/app/$R/app}"); done
    exec env ${envs[@]+"${envs[@]}"} "${args[@]}" ;;
  *) echo "Error: No such container: $c" >&2; exit 1 ;;
esac
