"""deis-database's first boot (stand-in): when database $DBNAME is missing, load the newest
``basebackups_005/*.sql`` object of db_wal on the gateway (what WAL-E's backup-fetch does)."""

import os
import subprocess
import sys

import s3fs

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "..", "gateway.env")) as fh:
    env = dict(line.strip().split("=", 1) for line in fh if "=" in line)
db = env["DBNAME"]
have = subprocess.run(
    [
        "sudo",
        "-n",
        "-u",
        "postgres",
        "psql",
        "-X",
        "-A",
        "-t",
        "-d",
        "postgres",
        "-c",
        f"SELECT 1 FROM pg_database WHERE datname = '{db}'",
    ],
    capture_output=True,
    text=True,
    check=True,
    cwd="/",
).stdout.strip()
if have:
    sys.exit(0)
fs = s3fs.S3FileSystem(
    key=env["ACCESS"],
    secret=env["SECRET"],
    client_kwargs={"endpoint_url": env["GATEWAY"]},
    skip_instance_cache=True,
)
found = sorted(fs.glob("db_wal/basebackups_005/*.sql"))
if not found:
    print("deis-database: no base backup in db_wal: starting empty", file=sys.stderr)
    sys.exit(0)
data = fs.cat(found[-1])
subprocess.run(
    ["sudo", "-n", "-u", "postgres", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"],
    input=data,
    check=True,
    cwd="/",
)
with open(os.path.join(os.path.dirname(__file__), "..", "events.log"), "a") as fh:
    fh.write(f"database restored from {found[-1]}\n")
