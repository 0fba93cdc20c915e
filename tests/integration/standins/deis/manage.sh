#!/usr/bin/env bash
# Stand-in for the controller's `./manage.py shell` (seed 003): reads the script on stdin and,
# when it saves every Key, App and Domain, writes them to etcd (v2, real etcdctl) at $ETCD the
# way the controller does: /deis/builder/users/<user>/<fingerprint>, /deis/services/<app>,
# /deis/domains/<domain>, /deis/config/<app>/<key>. Rows come from the real PostgreSQL.
#
# The script runs the way Deis v1's Django 1.x `manage.py shell` runs it without IPython:
# code.interact() reading stdin (real Python here, with an api.models whose objects' save()
# writes to etcd and raises when it cannot; when etcd is down at its import, it keeps no client
# and every save publishes nothing, as Deis v1's api.models does). A statement that raises prints its traceback on
# stderr and the shell goes on to the next; at the end of stdin it exits 0 however many
# failed. Only SystemExit (sys.exit) changes its exit status.
set -euo pipefail
R=$(cd "$(dirname "$0")/.." && pwd)
. "$R/gateway.env"
[ "${1:-}" = shell ] || { echo "manage.py stand-in: only shell" >&2; exit 2; }
[ -n "${ETCD:-}" ] || { echo "manage.py: ETCD is not set" >&2; exit 1; }
script=$(cat; echo .); script=${script%.}  # exactly as sent (a trailing blank line matters to code.interact)
for m in Key App Domain; do
  grep -qF "save() for " <<<"$script" && grep -qF "$m.objects.all()" <<<"$script" \
    || { echo "manage.py stand-in: the script does not save every $m" >&2; exit 1; }
done
shell=$(cat <<'PY'
import code, os, subprocess, sys, types

etcd, db = os.environ["ETCD"], os.environ["DBNAME"]


def rows(sql):
    out = subprocess.run(
        ["sudo", "-n", "-u", "postgres", "psql", "-X", "-A", "-t", "-F", "\t", "-d", db, "-c", sql],
        cwd="/", capture_output=True, text=True, check=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def etcdctl(*args, exists_ok=False):
    done = subprocess.run(
        ["etcdctl", "--endpoints=http://" + etcd, *args],
        env={**os.environ, "ETCDCTL_API": "2"}, capture_output=True, text=True,
    )
    if done.returncode and not (exists_ok and "already exists" in done.stderr):
        lines = done.stderr.strip().splitlines()
        raise IOError("etcd %s: %s" % (etcd, lines[-1] if lines else "exit %d" % done.returncode))


def reachable():
    done = subprocess.run(
        ["etcdctl", "--endpoints=http://" + etcd, "ls", "/"],
        env={**os.environ, "ETCDCTL_API": "2"}, capture_output=True, text=True,
    )
    return done.returncode == 0


# Deis v1's api.models at import: etcd.Client(...), and when that fails it logs "Cannot
# synchronize with etcd cluster", keeps _etcd_client = None and connects no publishing
# post_save handler: every save then succeeds and publishes nothing.
CLIENT = object() if reachable() else None
if CLIENT is None:
    sys.stderr.write("WARNING Cannot synchronize with etcd cluster\n")


def publish(*args, exists_ok=False):
    if CLIENT is not None:
        etcdctl(*args, exists_ok=exists_ok)


class Manager:
    def __init__(self, make, sql):
        self.make, self.sql = make, sql

    def all(self):
        return [self.make(*row) for row in rows(self.sql)]


class Key:
    def __init__(self, owner, fingerprint, public):
        self.owner, self.fingerprint, self.public = owner, fingerprint, public

    def save(self):
        publish("set", "/deis/builder/users/%s/%s" % (self.owner, self.fingerprint), self.public)


class App:
    def __init__(self, id):
        self.id = id

    def save(self):
        publish("mkdir", "/deis/services/" + self.id, exists_ok=True)
        for key, value in rows("SELECT key, value FROM api_config WHERE app = '%s' ORDER BY 1" % self.id):
            publish("set", "/deis/config/%s/%s" % (self.id, key), value)


class Domain:
    def __init__(self, domain, app):
        self.domain, self.app = domain, app

    def save(self):
        publish("set", "/deis/domains/" + self.domain, self.app)


Key.objects = Manager(Key, "SELECT owner, fingerprint, public FROM api_key ORDER BY 1, 2")
App.objects = Manager(App, "SELECT id FROM api_app ORDER BY 1")
Domain.objects = Manager(Domain, "SELECT domain, app FROM api_domain ORDER BY 1")
api, models = types.ModuleType("api"), types.ModuleType("api.models")
models.Key, models.App, models.Domain, models.__all__ = Key, App, Domain, ["Key", "App", "Domain"]
models._etcd_client = CLIENT
api.models = models
sys.modules.update({"api": api, "api.models": models})
code.interact(banner="", local={"__name__": "__console__"}, exitmsg="")
PY
)
rc=0
printf "%s" "$script" | DBNAME="$DBNAME" "$PY" -c "$shell" >/dev/null || rc=$?
printf 'manage.py shell (ETCD=%s)\n' "$ETCD" >> "$R/events.log"
exit "$rc"
