#!/usr/bin/env bash
# Stand-in for the controller's `./manage.py shell` (seed 003): reads the script on stdin and
# runs it against an api.models whose saves publish to etcd (v2, real etcdctl) at $ETCD the way
# Deis v1's post_save handlers do (controller/api/models.py, v1.13): Key.save sets
# /deis/builder/users/<user>/<fingerprint>; App.save only makes the directory /deis/services/<app>;
# Domain.save sets /deis/domains/<domain>; Config.save merges the app's latest Config into itself
# (its own values win), stores that, empties /deis/config/<app> and sets
# /deis/config/<app>/<key, lower-cased> for each value; Certificate.save sets
# /deis/certs/<common name>/cert and /key. Nothing else publishes config or certificates: a
# script that saves only keys, apps and domains (the seed's) leaves them out of etcd. Rows come
# from the real PostgreSQL (Config.objects are newest first, Meta ordering '-created').
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
import code, json, os, subprocess, sys, types

etcd, db = os.environ["ETCD"], os.environ["DBNAME"]


def psql(sql):
    return subprocess.run(
        ["sudo", "-n", "-u", "postgres", "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
        cwd="/", capture_output=True, text=True, check=True,
    ).stdout


def rows(sql):
    """Each row's values in column order (as JSON: values may span lines, e.g. a PEM)."""
    out = psql("SELECT coalesce(json_agg(row_to_json(t)), '[]') FROM (%s) t" % sql)
    return [tuple(r.values()) for r in json.loads(out)]


def literal(text):
    return "'" + text.replace("'", "''") + "'"


def etcdctl(*args, exists_ok=False):
    done = subprocess.run(
        ["etcdctl", "--endpoints=http://" + etcd, *args],
        env={**os.environ, "ETCDCTL_API": "2"}, capture_output=True, text=True,
    )
    if done.returncode and not (exists_ok and ("already exists" in done.stderr or "not found" in done.stderr)):
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


class DoesNotExist(Exception):
    pass


class ConfigSet:
    """``app.config_set``: the app's Config rows, newest first."""

    def __init__(self, app):
        self.app = app

    def all(self):
        return [c for c in Config.objects.all() if c.app == self.app]

    def exists(self):
        return bool(self.all())

    def latest(self):
        configs = self.all()
        if not configs:
            raise Config.DoesNotExist("Config matching query does not exist.")
        return configs[0]


class App:
    def __init__(self, id):
        self.id = id
        self.config_set = ConfigSet(id)

    def save(self):
        # _etcd_publish_app: the service directory only; config is Config's to publish
        publish("mkdir", "/deis/services/" + self.id, exists_ok=True)


class Domain:
    def __init__(self, domain, app):
        self.domain, self.app = domain, app

    def save(self):
        publish("set", "/deis/domains/" + self.domain, self.app)


class Config:
    DoesNotExist = DoesNotExist

    def __init__(self, uuid, app, created, values):
        self.uuid, self.app, self.created, self.values = uuid, app, created, json.loads(values)

    def save(self):
        # Config.save: the latest Config's values, updated with this one's, are stored in this row
        values = dict(ConfigSet(self.app).latest().values)
        values.update(self.values)
        self.values = {k: v for k, v in values.items() if v is not None}
        psql('UPDATE api_config SET "values" = %s WHERE uuid = %s'
             % (literal(json.dumps(self.values)), literal(self.uuid)))
        # _etcd_publish_config: purge the app's directory, then one key per value, lower-cased
        publish("rm", "--recursive", "/deis/config/" + self.app, exists_ok=True)
        for k, v in self.values.items():
            publish("set", "--", "/deis/config/%s/%s" % (self.app, k.lower()), str(v))


class Certificate:
    def __init__(self, common_name, certificate, key):
        self.common_name, self.certificate, self.key = common_name, certificate, key

    def save(self):
        # _etcd_publish_cert
        publish("set", "--", "/deis/certs/%s/cert" % self.common_name, self.certificate)
        publish("set", "--", "/deis/certs/%s/key" % self.common_name, self.key)


Key.objects = Manager(Key, "SELECT owner, fingerprint, public FROM api_key ORDER BY 1, 2")
App.objects = Manager(App, "SELECT id FROM api_app ORDER BY 1")
Domain.objects = Manager(Domain, "SELECT domain, app FROM api_domain ORDER BY 1")
Config.objects = Manager(Config, 'SELECT uuid, app, created, "values" FROM api_config ORDER BY created DESC')
Certificate.objects = Manager(
    Certificate, "SELECT common_name, certificate, key FROM api_certificate ORDER BY 1"
)
api, models = types.ModuleType("api"), types.ModuleType("api.models")
names = ["Key", "App", "Domain", "Config", "Certificate"]
for name in names:
    setattr(models, name, globals()[name])
models.__all__ = names
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
