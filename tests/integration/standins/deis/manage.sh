#!/usr/bin/env bash
# Stand-in for the controller's `./manage.py shell` (seed 003): reads the script on stdin and,
# when it saves every Key, App and Domain, writes them to etcd (v2, real etcdctl) at $ETCD the
# way the controller does: /deis/builder/users/<user>/<fingerprint>, /deis/services/<app>,
# /deis/domains/<domain>, /deis/config/<app>/<key>. Rows come from the real PostgreSQL.
set -euo pipefail
R=$(cd "$(dirname "$0")/.." && pwd)
. "$R/gateway.env"
[ "${1:-}" = shell ] || { echo "manage.py stand-in: only shell" >&2; exit 2; }
[ -n "${ETCD:-}" ] || { echo "manage.py: ETCD is not set" >&2; exit 1; }
script=$(cat)
for m in Key App Domain; do
  grep -qF "save() for " <<<"$script" && grep -qF "$m.objects.all()" <<<"$script" \
    || { echo "manage.py stand-in: the script does not save every $m" >&2; exit 1; }
done
q() { (cd / && sudo -n -u postgres psql -X -A -t -F ' ' -d "$DBNAME" -c "$1"); }
e() { ETCDCTL_API=2 etcdctl --endpoints="http://$ETCD" "$@" >/dev/null; }
q "SELECT owner, fingerprint, public FROM api_key ORDER BY 1, 2" | while read -r owner fp pub; do
  e set "/deis/builder/users/$owner/$fp" "$pub"; done
q "SELECT id FROM api_app ORDER BY 1" | while read -r app; do
  e mkdir "/deis/services/$app" 2>/dev/null || true; done
q "SELECT domain, app FROM api_domain ORDER BY 1" | while read -r domain app; do
  e set "/deis/domains/$domain" "$app"; done
q "SELECT app, key, value FROM api_config ORDER BY 1, 2" | while read -r app key value; do
  e set "/deis/config/$app/$key" "$value"; done
printf 'manage.py shell (ETCD=%s)\n' "$ETCD" >> "$R/events.log"
