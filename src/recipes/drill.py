"""Restore drills: a snapshot restored onto a scratch host, then proved against what was recorded
at backup time, timed, and kept as a signed record in the repository.

A drill is a restore (``restore.restore`` / ``restore_external``, nothing of its own) onto a host
that is not the source, followed by read-only checks on that host:

* per archive: regular files and bytes under the extraction root, and the sha256 of the sampled
  paths (``facts.TarFacts``), against the archive's facts;
* per dump: rows of every table the dump's facts count, asked of the restored database;
* restores from outside the repository (GOV.UK's duplicity collections): the row counts
  (``drill_dumps``) and tree facts (``drill_tree``) the newest trusted manifest of ``recipes run``
  recorded for the source, when it is of the collection restored;
* the recipe's own health checks (``drill_checks``: Looker's health_check, DSS status).

Facts that were not recorded, or that cannot be compared (an incremental's archive holds only its
changes), make a check *skipped* with its reason in the record, never a silent pass. The record
(``drills/<recipe>/<source-host>/<time>.json``) is signed under the namespace ``recipes-drill``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from recipes import manifest as mf
from recipes.errors import ConfigError, RecipeError, RepositoryError, VerifyError
from recipes.hosts import Host, HostSpec, key_values
from recipes.hosts import run as run_on
from recipes.model import Command, sh
from recipes.plan import Plan
from recipes.recipe import Recipe
from recipes.repository import Repository, safe_name
from recipes.steps import Extract, Load, MoveAside, ReadSecret, RestoreBucket

log = logging.getLogger("recipes")

NAMESPACE = "recipes-drill"
"""sshsig namespace of drill records: a manifest's signature can never pass as a drill's."""
FORMAT = 1
STAMP = "%Y%m%dT%H%M%SZ"
WRITTEN_MARGIN = 5
"""Seconds before a forced drill's start from which a file's change time counts as written by it."""
TIME = "%Y-%m-%dT%H:%M:%SZ"
# MySQL's own schemas: rebuilt or statistics, not the application's data.
_MYSQL_SYSTEM = ("mysql", "sys", "performance_schema", "information_schema")

AfterRestore = Callable[[Host], None]


# --------------------------------------------------------------------------- checks


def check(name: str, ok: bool, expected: object, found: object) -> dict[str, Any]:
    """One named check as the record keeps it."""
    return {"name": name, "ok": ok, "expected": str(expected), "found": str(found)}


def skipped(name: str, expected: object, reason: str) -> dict[str, Any]:
    """A check that could not be made: not a failure, never a pass; ``skipped`` says why."""
    return {
        "name": name,
        "ok": True,
        "expected": str(expected),
        "found": f"skipped: {reason}",
        "skipped": reason,
    }


def archive_checks(
    obj: mf.StoredObject,
    root: str,
    measured: dict[str, str],
    *,
    level: int,
    shared: bool,
    rewritten: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Compare an archive's facts with what the scratch host holds under ``root``.

    ``measured`` is what ``measure_command`` printed: ``files``/``bytes`` of the regular files not
    modified since the restore began (the archive sets every file's mtime) plus ``rewritten``
    (declared paths the restore itself wrote afterwards, counted as present), and ``sample<i>``
    the sha256 (or ``missing``) of the i-th sampled path. ``rewritten`` are the paths the recipe
    declares rewritten (their hash is not compared); one ending in ``/`` is a directory the
    restored application writes in when it starts (DSS's ``run/`` logs): ``measured["volatile"]``
    counts its files modified since, which may be archived files appended to or new ones, so the
    file count is then a range (unchanged <= recorded <= unchanged + written there) and bytes are
    not compared. ``level`` > 0: the archive holds an incremental's changes only, so only the
    sample compares; ``shared``: the root held other files before (extracted over a shared
    directory), so only the sample compares.
    """
    name = obj.name
    facts = obj.facts
    if not facts:
        why = "no facts recorded at backup time (a snapshot from before archives were always counted)"
        return [skipped(f"{name} {what}", "facts", why) for what in ("files", "bytes", "sample")]
    if "error" in facts:
        why = f"the backup's facts are incomplete: {facts['error']}"
        return [skipped(f"{name} {what}", "facts", why) for what in ("files", "bytes", "sample")]
    out: list[dict[str, Any]] = []
    expected_files, expected_bytes = int(facts.get("files", 0)), int(facts.get("bytes", 0))
    if level:
        why = f"an incremental (level {level}): its archive's counts are of its changes only"
        out += [skipped(f"{name} files", expected_files, why), skipped(f"{name} bytes", expected_bytes, why)]
    elif shared:
        why = f"extracted over {root}, which may hold other files"
        out += [skipped(f"{name} files", expected_files, why), skipped(f"{name} bytes", expected_bytes, why)]
    elif "files" not in measured:
        out.append(check(f"{name} files", False, expected_files, f"{root} could not be read"))
    elif dirs := [d for d in rewritten if d.endswith("/")]:
        unchanged = int(measured.get("files", "0") or 0) + int(measured.get("rewritten", "0") or 0)
        written = int(measured.get("volatile", "0") or 0)
        ok = unchanged <= expected_files <= unchanged + written
        where = ", ".join(dirs)
        found_text = f"{unchanged} unchanged + {written} written since the restore under {where}"
        out.append(
            check(
                f"{name} files",
                ok,
                f"{expected_files} (a range: the application writes in {where})",
                found_text,
            )
        )
        why = f"the restored application writes in {where} (its logs) when it starts"
        out.append(skipped(f"{name} bytes", expected_bytes, why))
    else:
        found = int(measured.get("files", "0") or 0) + int(measured.get("rewritten", "0") or 0)
        out.append(check(f"{name} files", found == expected_files, expected_files, found))
        if int(measured.get("rewritten", "0") or 0):
            why = f"{measured['rewritten']} file(s) rebuilt by the restore itself ({', '.join(rewritten)})"
            out.append(skipped(f"{name} bytes", expected_bytes, why))
        else:
            found_bytes = int(measured.get("bytes", "0") or 0)
            out.append(check(f"{name} bytes", found_bytes == expected_bytes, expected_bytes, found_bytes))
    sample: dict[str, str] = dict(facts.get("sample", {}))
    if not sample:
        out.append(skipped(f"{name} sample", 0, "no file small enough was sampled"))
        return out
    bad, compared, left = [], 0, []
    for i, (path, digest) in enumerate(sorted(sample.items())):
        full = _joined(root, path)
        if full in rewritten or any(d.endswith("/") and full.startswith(d) for d in rewritten):
            left.append(path)
            continue
        compared += 1
        got = measured.get(f"sample{i}", "missing")
        if got != digest:
            bad.append(f"{path} {got[:12] if got != 'missing' else 'missing'}")
    found_text = f"{compared - len(bad)} of {compared} equal"
    if bad:
        found_text += "; differ: " + ", ".join(bad)
    if left:
        found_text += f"; not compared (rebuilt by the restore): {', '.join(left)}"
    out.append(check(f"{name} sample", not bad, f"sha256 of {compared} sampled files", found_text))
    return out


def _joined(root: str, path: str) -> str:
    """``path`` (an archive member, maybe ``./x``) under ``root`` as an absolute normalised path."""
    return os.path.normpath("/" + "/".join(p for p in (root.strip("/"), path) if p))


def measure_command(
    root: str, start: str, sample: Iterable[str], rewritten: Sequence[str], written_only: bool = False
) -> Command:
    """One read-only command: ``files=``/``bytes=`` of the regular files under ``root`` not
    modified since ``start`` (epoch seconds on that host; each inode once, as TarFacts counts a
    hard link's later names as links) and, with ``written_only`` (``--force`` over a scratch
    tree that was not empty), changed since ``start`` less a margin: tar sets a file's mtime but
    never its ctime, so a file left from before (an earlier drill's) does not count;
    ``rewritten=`` how many of the ``rewritten`` paths exist there modified since,
    ``volatile=`` the files modified since under the ``rewritten`` directories (those ending
    in ``/``), and ``sample<i>=`` each sample path's sha256 (``missing`` when it is not a
    regular file)."""
    r = sh(root)
    # the margin: a file system whose times lag this host's clock, or count whole seconds
    written = f"-newerct @{int(float(start)) - WRITTEN_MARGIN}" if written_only else ""
    lines = [
        f"cd {r} 2>/dev/null || exit 0",
        # each inode once, as tar stores it (a hard link's later names are links in the archive)
        f"find . -xdev -type f {written} ! -newermt @{start} -printf '%n %i %s\\n' | "
        "awk '$1 == 1 || !seen[$2]++ {n++; b+=$3} END {printf \"files=%d\\nbytes=%.0f\\n\", n, b}'",
    ]
    inside = [p for p in rewritten if p == root or p.startswith(root.rstrip("/") + "/")]
    mine = [p for p in inside if not p.endswith("/")]
    if dirs := [p for p in inside if p.endswith("/")]:
        tops = " ".join(sh(d) for d in dirs)
        lines.append(f"echo volatile=$(find {tops} -xdev -type f -newermt @{start} 2>/dev/null | wc -l)")
    if mine:
        tests = " ".join(sh(p) for p in mine)
        lines.append(
            f'n=0; for f in {tests}; do [ -f "$f" ] && [ -n "$(find "$f" -newermt @{start})" ] '
            "&& n=$((n+1)); done; echo rewritten=$n"
        )
    for i, path in enumerate(sorted(sample)):
        p = sh(path)
        lines.append(
            f"if [ -f {p} ] && [ ! -L {p} ]; then echo sample{i}=$(sha256sum < {p} | cut -c1-64); "
            f"else echo sample{i}=missing; fi"
        )
    return Command("\n".join(lines))


def row_checks(obj: mf.StoredObject, found: dict[str, str] | None, why_not: str = "") -> list[dict[str, Any]]:
    """Rows per table of a dump's facts against the counts ``found`` on the restored database
    (``None``: not counted, ``why_not`` says why)."""
    rows: dict[str, int] = dict(obj.facts.get("rows", {}))
    name = obj.name
    if not obj.facts:
        return [skipped(f"{name} rows", "facts", "no row counts recorded at backup time")]
    if "error" in obj.facts:
        return [
            skipped(f"{name} rows", "facts", f"the backup's row counts are incomplete: {obj.facts['error']}")
        ]
    if found is None:
        return [skipped(f"{name} rows", f"{len(rows)} tables", why_not)]
    if not rows:  # never no entry at all: an empty dump, or tables the counter did not see
        return [skipped(f"{name} rows", "0 tables", "the backup recorded no table in this dump")]
    out = []
    system = [t for t in rows if obj.engine == "mysql" and t.split(".")[0] in _MYSQL_SYSTEM]
    for table, count in sorted(rows.items()):
        if table in system:
            continue
        got = found.get(table, "missing")
        out.append(check(f"{name} rows {table}", got == str(count), count, got))
    if system:
        out.append(skipped(f"{name} rows mysql system tables", len(system), "the server's own schemas"))
    return out


def bucket_checks(
    obj: mf.StoredObject, measured: dict[str, Any] | None, why_not: str = ""
) -> list[dict[str, Any]]:
    """A bucket's facts (``objects``, ``bytes``, ``sample`` of key -> sha256, as
    ``buckets.BucketTar`` recorded them) against ``measured`` from the scratch gateway (the same
    keys; a sampled key's digest ``missing`` when it is not there). ``None``: not listed,
    ``why_not`` says why."""
    name, facts = obj.name, obj.facts
    if not facts or "objects" not in facts:
        return [
            skipped(f"{name} {what}", "facts", "no facts recorded at backup time")
            for what in ("objects", "sample")
        ]
    if measured is None:
        return [skipped(f"{name} {what}", "facts", why_not) for what in ("objects", "bytes", "sample")]
    out = []
    for what in ("objects", "bytes"):
        expected, found = int(facts.get(what, 0)), int(measured.get(what, 0))
        out.append(check(f"{name} {what}", found == expected, expected, found))
    sample: dict[str, str] = dict(facts.get("sample", {}))
    if not sample:
        out.append(skipped(f"{name} sample", 0, "the bucket was empty"))
        return out
    got: dict[str, str] = dict(measured.get("sample", {}))
    bad = [
        f"{key} {got.get(key, 'missing')[:12]}"
        for key, digest in sorted(sample.items())
        if got.get(key) != digest
    ]
    found_text = f"{len(sample) - len(bad)} of {len(sample)} equal" + (
        f"; differ: {', '.join(bad)}" if bad else ""
    )
    out.append(check(f"{name} sample", not bad, f"sha256 of {len(sample)} sampled objects", found_text))
    return out


def measure_bucket(fs: Any, bucket: str, sample: Iterable[str]) -> dict[str, Any]:
    """What a bucket holds now, read-only: ``objects``, ``bytes`` and the sha256 of each
    ``sample`` key (``missing`` when absent), read in chunks."""
    import hashlib

    prefix = bucket.rstrip("/") + "/"
    try:
        found: dict[str, dict[str, Any]] = fs.find(bucket, detail=True)
    except FileNotFoundError:
        found = {}
    sizes = {
        path.removeprefix(prefix): int(info.get("size") or info.get("Size") or 0)
        for path, info in found.items()
    }
    digests: dict[str, str] = {}
    for key in sample:
        if key not in sizes:
            digests[key] = "missing"
            continue
        h = hashlib.sha256()
        with fs.open(prefix + key, "rb", block_size=1 << 20) as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        digests[key] = h.hexdigest()
    return {"objects": len(sizes), "bytes": sum(sizes.values()), "sample": digests}


def fact_checks(facts: dict[str, str], name: str, result: Any) -> list[dict[str, Any]]:
    """A recorded fact of space-separated names (Deis's ``etcd_keys``) against what its drill
    command printed on the scratch side (``result``: a ``hosts.Result``): each recorded name
    must be there again (more is fine: a new cluster has its own). Exit 127: the tool is not
    on the scratch host, so the check is skipped with its words."""
    recorded = set(facts.get(name, "").split())
    if name not in facts:
        return [skipped(name, "facts", "not recorded at backup time")]
    if not recorded:
        return [skipped(name, 0, "the backup recorded none (its tool was not on the source host)")]
    said = (result.stderr or result.stdout.decode("utf-8", "replace")).strip().splitlines()[-1:] or [""]
    if result.exit_status == 127:
        return [skipped(name, len(recorded), said[0] or "its tool is not on the scratch host")]
    if result.exit_status != 0:
        return [check(name, False, f"{len(recorded)} recorded", f"exit {result.exit_status}: {said[0]}")]
    found = set(result.stdout.decode("utf-8", "replace").split())
    missing = sorted(recorded - found)
    text = f"{len(recorded) - len(missing)} of {len(recorded)} present"
    if missing:
        text += (
            "; missing: "
            + ", ".join(missing[:10])
            + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
        )
    return [check(name, not missing, f"{len(recorded)} recorded", text)]


def parse_counts(output: bytes) -> dict[str, str]:
    """``table<TAB>rows`` lines as a map (other lines ignored)."""
    out: dict[str, str] = {}
    for line in output.decode("utf-8", "replace").splitlines():
        table, tab, rows = line.rpartition("\t")
        if tab and rows.strip().isdigit():
            out[table] = rows.strip()
    return out


def failed(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in record["checks"] if not c["ok"]]


def _bucket_checks(
    p: Plan, steps: list[RestoreBucket], manifest: mf.Manifest, hosts: dict[str, list[Host]]
) -> list[dict[str, Any]]:
    """Each restored bucket on the scratch gateway against its object's facts. The gateway keys
    are read again on the scratch side by the plan's own ``ReadSecret`` steps (memory only)."""
    from recipes import buckets as bk

    readers = {s.name: s for s in p.steps if isinstance(s, ReadSecret)}
    out: list[dict[str, Any]] = []
    for step in steps:
        obj = manifest.object(step.object)
        if obj is None:
            continue
        end = step.bucket
        secrets: dict[str, str] = {}
        why = ""
        for name in end.key_values:
            reader = readers.get(name)
            if reader is None:
                why = f"the plan reads no {name}"
                break
            result = run_on(hosts[reader.role][0], reader.command)
            secrets[name] = result.stdout.decode("utf-8", "replace").strip()
            if result.exit_status != 0 or not secrets[name]:
                why = f"read {name} failed on the scratch host (exit {result.exit_status})"
                break
        measured = None
        if not why:
            try:
                measured = measure_bucket(
                    bk.filesystem(end, secrets), end.bucket, obj.facts.get("sample", {})
                )
            except Exception as exc:  # s3fs/botocore/aiohttp: the scratch gateway failed
                said = " ".join(str(exc).split())[:200] or type(exc).__name__
                why = f"the scratch gateway {end.gateway} did not list s3://{end.bucket}: {said}"
        if measured is None:
            out += [check(f"{obj.name} objects", False, obj.facts.get("objects", "facts"), why)]
        else:
            out += bucket_checks(obj, measured)
    return out


def external_row_checks(
    r: Recipe, params: Any, manifest: mf.Manifest | None, host: Host, snapshot: str
) -> list[dict[str, Any]]:
    """Rows per table of what a restore from outside the repository loaded (govuk-datastore's
    duplicity collection), against the row counts the newest trusted manifest of ``recipes run``
    recorded for the source, through the recipe's ``drill_dumps(params, facts)``: each dump the
    restore loads as a dump object with ``rows`` facts and its count command, or why not."""
    method = getattr(r, "drill_dumps", None)
    if method is None:
        return []
    if manifest is None:
        why = f"no trusted {r.name} manifest of the source in the repository (recipes run records row counts)"
        return [skipped("rows", "row counts", why)]
    if snapshot != "latest":
        why = f"--snapshot {snapshot}: the newest manifest ({manifest.snapshot}) counts the newest backup"
        return [skipped("rows", "row counts", why)]
    got = method(params, dict(manifest.facts))
    if isinstance(got, str):
        return [skipped("rows", "row counts", f"{got} (manifest {manifest.snapshot})")]
    out: list[dict[str, Any]] = []
    for obj, count in got:
        result = run_on(host, count(tuple(obj.facts.get("rows", {}))))
        out += row_checks(obj, parse_counts(result.stdout))
    return out


def external_tree_checks(
    r: Recipe,
    params: Any,
    manifest: mf.Manifest | None,
    host: Host,
    start: str,
    snapshot: str,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Files, bytes and the content sample of a tree a restore from outside the repository wrote
    (govuk-assets' duplicity collection), against the tar facts the newest trusted manifest of
    ``recipes run`` recorded of the stream it pulled from the source, through the recipe's
    ``drill_tree(params, facts)``: ``(archive object, root on the host)`` or why not. The root
    was empty before the restore (or moved aside), so every count compares."""
    method = getattr(r, "drill_tree", None)
    if method is None:
        return []
    names = ("files", "bytes", "sample")
    if manifest is None:
        why = f"no trusted {r.name} manifest of the source in the repository (recipes run records tree facts)"
        return [skipped(f"tree {what}", "tree facts", why) for what in names]
    if snapshot != "latest":
        why = f"--snapshot {snapshot}: the newest manifest ({manifest.snapshot}) describes the newest backup"
        return [skipped(f"tree {what}", "tree facts", why) for what in names]
    got = method(params, dict(manifest.facts))
    if isinstance(got, str):
        why = f"{got} (manifest {manifest.snapshot})"
        return [skipped(f"tree {what}", "tree facts", why) for what in names]
    obj, root = got
    members = [_joined(root, m) for m in sorted(obj.facts.get("sample", {}))]
    result = run_on(host, measure_command(root, start, members, (), written_only=force))
    measured = key_values(result.stdout) if result.exit_status == 0 else {}
    return archive_checks(obj, root, measured, level=0, shared=False)


# --------------------------------------------------------------------------- refusals


def _addresses(spec: HostSpec) -> tuple[set[str], int]:
    """Where a host spec leads: its resolved addresses (``~/.ssh/config`` aliases and DNS names
    resolved; the name itself when it does not resolve) and port."""
    if spec.is_local:
        return {"local"}, 0
    import fabric

    conn = fabric.Connection(spec.address or spec.name, user=spec.user, port=spec.port)
    host, port = str(conn.host), int(conn.port)
    try:
        found = {str(ai[4][0]) for ai in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except OSError:
        found = set()
    return found | {host.lower()}, port


def _this_machine() -> set[str]:
    """The names and addresses this controller answers to (``--host local`` is this machine)."""
    names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
    found = set(names) | {"127.0.0.1", "::1"}
    for name in names:
        with contextlib.suppress(OSError):
            found |= {str(ai[4][0]) for ai in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}
    return found


def _is_this_machine(spec: HostSpec) -> bool:
    """Whether an SSH host spec leads back to this machine, on any port (loopback included)."""
    import ipaddress

    addresses, _ = _addresses(spec)
    for address in addresses:
        try:
            if ipaddress.ip_address(address.split("%", 1)[0]).is_loopback:
                return True
        except ValueError:
            pass
    return bool(addresses & _this_machine())


def refuse_same_host(source: HostSpec, scratch: HostSpec) -> None:
    """ConfigError when the scratch host's address:port is the source's; when either is
    ``local`` (this machine), when the other one is this machine too, on any port."""
    if source.is_local or scratch.is_local:
        other = scratch if source.is_local else source
        if other.is_local or _is_this_machine(other):
            raise ConfigError(
                f"drill: the scratch host {scratch.name} and the source {source.name} are both this "
                "machine: a drill restores onto another host; give --to-host a scratch machine"
            )
        return
    src, src_port = _addresses(source)
    dst, dst_port = _addresses(scratch)
    same = src & dst
    if same and src_port == dst_port:
        where = f"{sorted(same)[0]}:{dst_port}" if dst_port else "this machine"
        raise ConfigError(
            f"drill: the scratch host {scratch.name} is the source {source.name} ({where}): a drill "
            "restores onto another host; give --to-host a scratch machine"
        )


def _source_fingerprints(spec: HostSpec) -> set[str]:
    """The source's SSH host key fingerprints as this controller knows them (pin, known_hosts)."""
    from recipes.hostkeys import HostKeyCheck, fingerprint, parse_public_key

    if spec.is_local:
        return set()
    if spec.host_key:
        try:
            return {fingerprint(parse_public_key(spec.host_key))}
        except ValueError:
            return set()
    import fabric

    conn = fabric.Connection(spec.address or spec.name, user=spec.user, port=spec.port)
    keys = HostKeyCheck.create(spec.name, str(conn.host), int(conn.port), conn.ssh_config)
    return {fingerprint(k.key) for k in keys.known() if not k.revoked}


def refuse_same_key(source: HostSpec, scratch: Host) -> None:
    """ConfigError when the connected scratch host presents one of the source's host keys."""
    from recipes.hostkeys import fingerprint

    transport = getattr(scratch, "_transport", None)
    if transport is None:
        return
    key = transport().get_remote_server_key()
    got = fingerprint(key)
    if got in _source_fingerprints(source):
        raise ConfigError(
            f"drill: the scratch host {scratch.name} presents the SSH host key of the source "
            f"{source.name} ({got}): it is the same machine; give --to-host a scratch machine"
        )


_DEFAULT_PORTS = (("mysql", 3306), ("postgres", 5432), ("pg", 5432))


def _places(host: str) -> set[str]:
    """A host name as the addresses it resolves to (and its own lower-cased name, without a
    trailing dot): ``db1``, ``db1.example.com.`` and its IP are one place."""
    name = host.strip().rstrip(".").lower()
    try:
        found = {str(ai[4][0]) for ai in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        found = set()
    return found | {name}


def _url_places(url: str) -> set[str]:
    """``scheme://host[:port]`` as ``address:port`` places (the scheme's default port filled in)."""
    from urllib.parse import urlsplit

    u = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        return {url.rstrip("/").lower()}
    return {f"{place}:{port}" for place in _places(u.hostname or "")}


def endpoints(params: dict[str, Any]) -> dict[str, set[str]]:
    """The places a restore with these parameters writes to, each as ``label -> keys``: database
    connections with an address (``address:port/db``, the engine's default port filled in, the
    name resolved; the local socket is the host's own), a gateway's buckets, etcd and URLs. Two
    labels are the same place when their keys meet. Read-only sources (a duplicity collection, a
    key store the restore fetches from) are not places a restore writes to."""
    found: dict[str, set[str]] = {}
    for name, value in params.items():
        if isinstance(value, dict) and value.get("host"):
            default = next((port for word, port in _DEFAULT_PORTS if word in name.lower()), "")
            port = value.get("port") or default
            db = value.get("database") or "*"
            found[f"{name} {value['host']}:{port}/{db}"] = {
                f"db {place}:{port}/{db}" for place in _places(str(value["host"]))
            }
        elif name == "gateway" and isinstance(value, str) and value:
            for bucket in params.get("buckets") or ():
                found[f"bucket {bucket} at {value}"] = {f"bucket {p}/{bucket}" for p in _url_places(value)}
        elif name == "etcd" and isinstance(value, str) and value:
            found[f"etcd {value}"] = {f"etcd {p}" for p in _url_places(value)}
    return found


def refuse_shared_endpoints(
    source_params: dict[str, Any], scratch_params: dict[str, Any], whose: str = "recorded in its snapshot"
) -> None:
    """ConfigError naming the first endpoint the scratch-side restore would write that is one of
    the source's (``whose`` says where the source's come from)."""
    theirs = set().union(*endpoints(source_params).values())
    for label, keys in endpoints(scratch_params).items():
        if keys & theirs:
            raise ConfigError(
                f"drill: the scratch side's {label} is the source's ({whose}): the restore would "
                "write into the source; give the scratch host its own with --set"
            )


# --------------------------------------------------------------------------- records


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _record_path_parts(recipe: str, host: str, stamp: str) -> tuple[str, str, str]:
    """The last three parts of a record's path: recipe, host, ``<id>.json``."""
    return safe_name(recipe), safe_name(host), f"{stamp}.json"


def _record_path(repo: Repository, recipe: str, host: str, stamp: str = "") -> str:
    parts = ["drills", safe_name(recipe), safe_name(host)] + ([f"{stamp}.json"] if stamp else [])
    return "/".join([repo.root, *parts])


def record_id(started: dt.datetime) -> str:
    """A record's name: its start second and a random part, so two drills of one recipe@host
    started in the same second (two controllers, a retry) never write over each other."""
    return f"{started.strftime(STAMP)}-{secrets.token_hex(3)}"


def _record_name(record: dict[str, Any]) -> str:
    """``<id>`` (``<started>-<6 hex>``), or ``<started>`` for a record written before ids."""
    stamp = dt.datetime.strptime(str(record["started"]), TIME).strftime(STAMP)
    rid = record.get("id")
    if rid is None:
        return stamp
    if not isinstance(rid, str) or not re.fullmatch(re.escape(stamp) + r"-[0-9a-f]{6}", rid):
        raise ValueError(f"its id {rid!r} is not its start time and 6 hex digits")
    return rid


def write_record(repo: Repository, record: dict[str, Any], signer: Any) -> str:
    """The record and its signature into the repository, each appearing whole (signature first,
    so a listed record always has one). Returns the record's path."""
    path = _record_path(repo, record["recipe"], record["host"], _record_name(record))
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    signature = signer.sign(data, NAMESPACE)
    fs = repo.fs
    try:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        for final, blob in ((f"{path}.sig", signature), (path, data)):
            if repo.local:
                head, tail = final.rsplit("/", 1)
                tmp = f"{head}/.{tail}.partial"
                with fs.open(tmp, "wb") as fh:
                    fh.write(blob)
                os.replace(tmp, final)
            else:
                with fs.open(final, "wb") as fh:  # an S3 PUT is atomic
                    fh.write(blob)
    except OSError as exc:
        raise RepositoryError(f"cannot write the drill record {path}: {exc.strerror or exc}") from exc
    return path


def _signers(trust: Any) -> list[Any]:
    if trust is None:
        from recipes import config

        trust = config.load(None).trust()
    return list(getattr(trust, "signers", trust))


def listing(
    repo: Repository, recipe: str | None = None, host: str | None = None, trust: Any = None
) -> list[dict[str, Any]]:
    """Every drill record, oldest first, each as ``{"path", "verified", "problem", "record"}``:
    ``verified`` when its signature (namespace ``recipes-drill``) is by a trusted signer.
    ``trust``: a ``Trust`` or a list of public keys (None: the configured signers)."""
    from recipes import signing

    signers = _signers(trust)
    pattern = "/".join(
        [
            repo.root,
            "drills",
            safe_name(recipe) if recipe else "*",
            safe_name(host) if host else "*",
            "*.json",
        ]
    )
    try:
        paths = sorted(repo.fs.glob(pattern), key=lambda p: (p.rsplit("/", 1)[-1], p))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RepositoryError(f"cannot list drills in {repo.url}: {exc}") from exc
    out = []
    for path in paths:
        problem: str | None = None
        record: dict[str, Any] | None = None
        try:
            data = repo.fs.cat(path)
        except OSError as exc:
            out.append({"path": path, "verified": False, "problem": f"unreadable: {exc}", "record": None})
            continue
        try:
            signature = repo.fs.cat(f"{path}.sig")
        except (FileNotFoundError, OSError):
            signature = None
        try:
            record = json.loads(data)
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise ValueError("not a drill record of format 1")
        except ValueError as exc:
            problem, record = f"damaged: {exc}", None
        if problem is None:
            if signature is None:
                problem = "unsigned"
            else:
                try:
                    signing.verify(data, signature, signers, NAMESPACE)
                except VerifyError as exc:
                    problem = str(exc)
        if problem is None and record is not None:
            problem = _misplaced(path, record)
        out.append({"path": path, "verified": problem is None, "problem": problem, "record": record})
    return out


def _misplaced(path: str, record: dict[str, Any]) -> str | None:
    """Why a validly signed record does not belong where it lies (a copy of another recipe's,
    host's or time's record, renamed to look newest), or None. A record lies at
    ``drills/<recipe>/<host>/<id>.json``, as ``write_record`` put it."""
    try:
        want = _record_path_parts(str(record["recipe"]), str(record["host"]), _record_name(record))
    except (KeyError, ValueError) as exc:
        return f"damaged: {exc}"
    got = tuple(path.rstrip("/").split("/")[-3:])
    if got != want:
        return f"signed for {'/'.join(want)}, but lies at {'/'.join(got)} (copied or renamed)"
    return None


def last(repo: Repository, recipe: str, host: str, trust: Any = None) -> dict[str, Any] | None:
    """The newest drill record of recipe@host whose signature verifies and that lies where it
    was written (None when there is none)."""
    good = [e["record"] for e in listing(repo, recipe, host, trust) if e["verified"]]
    good.sort(key=lambda rec: (str(rec["started"]), str(rec.get("finished", "")), str(rec.get("id", ""))))
    return good[-1] if good else None


# --------------------------------------------------------------------------- the drill


def run(
    cfg: Any,
    recipe: str,
    source: str,
    scratch: str,
    *,
    snapshot: str = "latest",
    sets: Sequence[str] = (),
    repo_url: str | None = None,
    identity: str | None = None,
    force: bool = False,
    after_restore: AfterRestore | None = None,
) -> dict[str, Any]:
    """Drill ``recipe``: restore the source's snapshot onto ``scratch`` and check it; returns the
    record, written signed into the repository. Raises VerifyError (exit 3) naming the failed
    checks after writing the record; ConfigError (exit 2) before anything is written when the
    scratch host or one of its endpoints is the source's.

    ``cfg``: a loaded ``recipes.config.Config``; ``source``/``scratch``: host names as ``--host``
    takes them. ``after_restore(scratch_host)`` runs between the restore and the checks (tests
    damage the restored copy there; scripts can add their own preparation).
    """
    from recipes import apps, config, plan, stream
    from recipes.hosts import open_host
    from recipes.recipe import make_params, restore_values, roles_of, split_options

    r = apps.get(recipe)
    src_spec = cfg.host(source)
    dst_spec = cfg.host(scratch)
    refuse_same_host(src_spec, dst_spec)
    external = bool(getattr(r, "external_restore", False))
    repository = Repository(cfg.repository_url(repo_url), dict(cfg.repository.options))
    signer = cfg.signer()
    trust = cfg.trust()
    given = f"{cfg.path or 'defaults'} [recipes.{recipe}] + --set"
    target, options = split_options(r, config.recipe_values(cfg, recipe, list(sets)), given)
    manifest: mf.Manifest | None = None
    identities: list[Any] = []
    if external:
        listed = [i for i in repository.listed(recipe, src_spec.name) if trust.problem(i) is None]
        manifest = listed[-1].manifest if listed else None
        if snapshot != "latest":
            import attrs

            options = attrs.evolve(options or plan.options_of(r)(), time=snapshot)  # type: ignore[misc]
        values = target
    else:
        path = cfg.existing_identity(identity)
        if path is None:
            raise ConfigError(
                "drill needs the age identity: pass --identity FILE or set [repository] identity_file"
            )
        identities = stream.load_identities(path)
        manifest = trust.check(repository.find_listed(recipe, src_spec.name, snapshot))
        values, _ = restore_values(r, target, manifest.params)
    params = make_params(r, values, given)
    p = plan.restore_plan(r, params, dst_spec.name, cfg.compression(scratch), options)
    if manifest is not None:
        refuse_shared_endpoints(manifest.params, p.params)
    # The configuration names the source's endpoints: without a --set of its own the scratch
    # side would write there (a GOV.UK drill often has no manifest of ours to compare with).
    configured, _ = split_options(r, config.recipe_values(cfg, recipe, []), given)
    refuse_shared_endpoints(configured, p.params, f"[recipes.{recipe}] in {cfg.path or 'the defaults'}")
    roles: dict[str, list[Host]] = {}
    for role, names in roles_of(r, params).items():
        specs = [cfg.host(n) for n in names]
        for spec in specs:
            if spec.name in (dst_spec.name, src_spec.name):
                raise ConfigError(f"drill: {role} host {spec.name} is the scratch or the source host")
            refuse_same_host(src_spec, spec)
        roles[role] = [open_host(spec) for spec in specs]
    live = open_host(dst_spec)
    try:
        refuse_same_key(src_spec, live)
        for hosts in roles.values():
            for h in hosts:
                refuse_same_key(src_spec, h)
        return _drill(
            r, p, params, manifest, repository, identities, trust, signer, live, roles, src_spec.name,
            snapshot, force, external, cfg.engine.deadman_seconds, after_restore,
        )  # fmt: skip
    finally:
        live.close()
        for hosts in roles.values():
            for h in hosts:
                h.close()


def _drill(
    r: Recipe,
    p: Plan,
    params: Any,
    manifest: mf.Manifest | None,
    repository: Repository,
    identities: list[Any],
    trust: Any,
    signer: Any,
    live: Host,
    roles: dict[str, list[Host]],
    source: str,
    snapshot: str,
    force: bool,
    external: bool,
    deadman: float,
    after_restore: AfterRestore | None,
) -> dict[str, Any]:
    from recipes import restore as restoring

    clock = run_on(live, Command("date +%s.%N"))
    start = clock.stdout.decode().strip() if clock.exit_status == 0 else ""
    if not start.replace(".", "").isdigit():
        raise ConfigError(
            f"drill: {live.name} did not tell its time (date +%s.%N): cannot tell restored files"
        )
    started = _now()
    began = time.monotonic()
    record: dict[str, Any] = {
        "format": FORMAT,
        "recipe": r.name,
        "host": source,
        "scratch": live.name,
        "snapshot": manifest.snapshot if manifest is not None and not external else snapshot,
        "started": started.strftime(TIME),
        "id": record_id(started),
    }
    error: RecipeError | None = None
    records: list[mf.StepRecord] = []
    try:
        if external:
            records = restoring.restore_external(p, live, force, roles=roles, deadman_seconds=deadman)
        else:
            assert manifest is not None
            records = restoring.restore(
                p,
                live,
                repository,
                manifest,
                identities,
                force,
                trust=trust,
                roles=roles,
                deadman_seconds=deadman,
            )
    except ConfigError:
        raise  # a guard's refusal before anything was written: no drill took place
    except RecipeError as exc:
        error = exc
    rto = round(time.monotonic() - began, 3)
    checks: list[dict[str, Any]] = []
    if error is not None:
        checks.append(check("restore", False, "the restore completes", str(error)))
    else:
        if after_restore is not None:
            after_restore(live)
        hosts = {**roles, "main": [live]}
        checks = _checks(r, p, params, manifest, hosts, start, external, snapshot, force)
    record.update(
        finished=_now().strftime(TIME),
        passed=error is None and not failed({"checks": checks}),
        rto_seconds=rto,
        steps=[{"name": s.name, "seconds": s.seconds} for s in records],
        checks=checks,
    )
    try:
        where = write_record(repository, record, signer)
    except RecipeError as exc:
        if record["passed"]:
            raise
        # the drill's own verdict (a failed restore or check) stays the error and its exit code
        log.warning("the drill record was not written: %s", exc)
        where = "not written (see the warning above)"
    else:
        log.info("drill record %s", where)
    if error is not None:
        raise error
    bad = failed(record)
    if bad:
        first = bad[0]
        more = f" (and {len(bad) - 1} more: {', '.join(c['name'] for c in bad[1:])})" if len(bad) > 1 else ""
        raise VerifyError(
            f"drill of {r.name}@{source} onto {live.name} failed check {first['name']}: expected "
            f"{first['expected']}, found {first['found']}{more}; record {where}"
        )
    return record


def _checks(
    r: Recipe,
    p: Plan,
    params: Any,
    manifest: mf.Manifest | None,
    hosts: dict[str, list[Host]],
    start: str,
    external: bool,
    snapshot: str = "latest",
    force: bool = False,
) -> list[dict[str, Any]]:
    """Every check of a finished restore, each command read-only."""
    from recipes.recipe import drill_checks, drill_rewrites

    out: list[dict[str, Any]] = []
    rewritten = drill_rewrites(r, params)
    emptied = {s.path for s in p.steps if isinstance(s, MoveAside)}
    for step in p.steps:
        if isinstance(step, Extract) and manifest is not None:
            obj = manifest.object(step.object)
            if obj is None:
                continue
            host = hosts[step.role][0]
            sample = dict(obj.facts.get("sample", {}))
            mine = [x for x in rewritten if x.startswith(step.root.rstrip("/") + "/")]
            members = [_joined(step.root, m) for m in sorted(sample)]
            result = run_on(host, measure_command(step.root, start, members, mine, written_only=force))
            measured = key_values(result.stdout) if result.exit_status == 0 else {}
            shared = not step.must_be_empty and step.root not in emptied
            level = manifest.level if step.incremental else 0
            out += archive_checks(obj, step.root, measured, level=level, shared=shared, rewritten=mine)
        elif isinstance(step, Load) and manifest is not None:
            obj = manifest.object(step.object)
            if obj is None:
                continue
            rows = list(obj.facts.get("rows", {}))
            if step.count is None:
                out += row_checks(obj, None, f"{step.name} is not loaded into a database on the host")
                continue
            result = run_on(hosts["main"][0], step.count(tuple(rows)))
            out += row_checks(obj, parse_counts(result.stdout))
    if external:
        out += external_row_checks(r, params, manifest, hosts["main"][0], snapshot)
        out += external_tree_checks(r, params, manifest, hosts["main"][0], start, snapshot, force)
    buckets = [s for s in p.steps if isinstance(s, RestoreBucket)]
    if buckets and manifest is not None:
        out += _bucket_checks(p, buckets, manifest, hosts)
    method = getattr(r, "drill_facts", None)
    if method is not None and manifest is not None:
        for fact, command, role in method(params):
            for host in hosts.get(role, []):
                out += fact_checks(manifest.facts, fact, run_on(host, command))
    for c in drill_checks(r, params):
        for host in hosts.get(c.role, []):
            result = run_on(host, c.command)
            said = result.stderr or result.stdout.decode("utf-8", "replace")
            last_words = said.strip().splitlines()[-1:] or [""]
            found = f"exit {result.exit_status}" + (f": {last_words[0]}" if last_words[0] else "")
            out.append(check(c.name, result.exit_status == 0, "exit 0", found))
    if not out:  # a drill that compared nothing says so: it never passes by having no checks
        why = (
            "restored from a source outside the repository: no facts to compare"
            if external
            else "nothing recorded at backup time to compare, and the recipe has no health check"
        )
        out.append(skipped("facts", "facts", why))
    return out
