"""The one renderer: ops as plan lines (``recipes plan``, ``restore --plan``) and as plain data
(``--json``). Runbooks build on the same functions, so no text describes a procedure twice."""

from __future__ import annotations

from typing import Any

from recipes import ops
from recipes.compression import Compression

ARCHIVE_CHAIN = (
    "incremental on the latest snapshot unless --full, there is none, its parameters or keys "
    "differ, or its chain's full is older than [retention] full_every; $STATE is in a private "
    "temp dir on the host holding the parent's state (none for a full), removed however the "
    "backup ends"
)
STATE_LINE = "-> {}.zst.age (tar's listed-incremental state, for the next backup)"
EXTRACT_CHAIN = (
    "applied for every snapshot of the chain, its full first; each incremental is extracted "
    "with --listed-incremental=/dev/null, which also deletes what was deleted before it was made"
)


def kind(step: object) -> str:
    """A step's kind as plans and manifests name it (``quiesce``, ``archive``, ``manual``...)."""
    return type(step).__name__.lower().removesuffix("step")


def _on(role: str) -> str:
    return "" if role == "main" else f" [on every {role} host]"


def _when(when: str | None) -> str:
    return f" (only if {when.removeprefix('running ')} was running)" if when else ""


def op_lines(op: ops.Op, compression: Compression, action: str) -> list[str]:
    """The lines one op reads as in a plan (commands masked)."""
    if isinstance(op, ops.Exec):
        out = [f"$ {op.command.masked()}{_on(op.role)}"]
        if op.when:
            out[0] += _when(op.when)
        if op.stdin is not None:
            out += ["  stdin <<'EOF'", *(f"  {line}" for line in op.stdin.splitlines()), "  EOF"]
        if op.capture and op.secret:
            out.append(f"  -> {{{{{op.capture}}}}} (a secret: held in memory only, never shown or stored)")
        elif op.capture:
            out.append(f"  -> {{{{{op.capture}}}}}" + (" (recorded as a fact)" if op.fact else ""))
        return out
    if isinstance(op, ops.Undo):
        how = (
            "always"
            if op.on == "always"
            else "if the restore fails"
            if action == "restore"
            else "if the run fails"
        )
        if op.when:
            how += ", if it was running"
        return [f"undo ({how}): $ {op.command.masked()}{_on(op.role)}"]
    if isinstance(op, ops.Release):
        return [f"then at once: {op.what} (the filesystem snapshot holds the data){_on(op.role)}"]
    if isinstance(op, ops.Manual):
        out = [f"manual (not run, yours to do): {op.text}"]
        if op.shell:
            out.append(f"  $ {op.shell}")
        return out
    if isinstance(op, ops.Guard):
        return [f"$ {op.probe.masked()}{_on(op.role)}", f"  {op.verdict.describe()}"]
    return _transfer_lines(op, compression, action)


def _transfer_lines(op: ops.Transfer, compression: Compression, action: str) -> list[str]:
    src, dst = op.src, op.dst
    out: list[str] = []
    if isinstance(dst, ops.SnapshotObject) and isinstance(src, ops.Bucket):
        out.append(f"-> {dst.describe()} (zstd and age on the controller)")
    elif isinstance(dst, ops.SnapshotObject):
        out.append(f"-> {dst.describe()} ({compression.describe(action)})")
    elif isinstance(src, ops.SnapshotObject) and isinstance(dst, ops.Bucket):
        out.append(f"<- {src.describe()} (age and zstd on the controller)")
    elif isinstance(src, ops.SnapshotObject):
        out.append(f"<- {src.describe()} ({compression.describe(action)})")
    elif isinstance(dst, ops.KeyStore):
        out.append(f"-> {dst.describe()}")
    elif isinstance(src, ops.KeyStore):
        out.append(f"<- {src.describe()}")
    elif isinstance(src, ops.DuplicityCollection):
        from recipes import duplicity

        out += [f"<- {src.describe()}", *duplicity.plan_lines(src)]
    elif isinstance(dst, ops.DuplicityCollection):
        from recipes import duplicity

        out += [f"-> duplicity {dst.url} {dst.file_to_restore}", *duplicity.backup_plan_lines(dst)]
    if isinstance(src, ops.Bucket):
        out.append(f"<- every object of {src.describe()}, as a tar built on the fly (s3fs on the controller)")
    if isinstance(dst, ops.Bucket):
        if dst.create:
            out.append(f"create s3://{dst.bucket} on {dst.gateway} unless it exists")
        out.append(f"-> every object back into {dst.describe()} (s3fs on the controller)")
    for end in (src, dst):
        if isinstance(end, ops.HostCommand) and end.state is not None:
            out += [
                f"-> {end.state}.zst.age (tar's listed-incremental state, for the next backup)",
                ARCHIVE_CHAIN,
            ]
        if isinstance(end, ops.SnapshotObject) and end.chain:
            out.append(EXTRACT_CHAIN)
    for end in (src, dst):
        if isinstance(end, ops.HostCommand):
            out += [f"$ {c.masked()}{_on(end.role)}" for c in _host_commands(end)]
    if op.background:
        out.append(
            "the next step starts once its first byte arrived (consistent from then on); "
            "the run waits for the rest before it ends"
        )
    return out


def _host_commands(end: ops.HostCommand) -> list[Any]:
    return [c for c in (end.command, end.incremental, end.check) if c is not None]


def commands(op_list: list[ops.Op]) -> list[str]:
    """Every command the ops run, masked, in order (undo and manual text excluded)."""
    out: list[str] = []
    for op in op_list:
        if isinstance(op, ops.Exec):
            out.append(op.command.masked())
        elif isinstance(op, ops.Guard):
            out.append(op.probe.masked())
        elif isinstance(op, ops.Transfer):
            for end in (op.src, op.dst):
                if isinstance(end, ops.HostCommand):
                    out += [c.masked() for c in _host_commands(end)]
    return out


def op_data(op: ops.Op) -> dict[str, Any]:
    """One op as plain data for ``plan --json`` (format 2)."""
    name = type(op).__name__.lower()
    if isinstance(op, ops.Exec):
        return {
            "op": name,
            "role": op.role,
            "command": op.command.masked(),
            **({"when": op.when} if op.when else {}),
            **({"capture": op.capture, "fact": op.fact} if op.capture else {}),
            **({"secret": True} if op.secret else {}),
            **({"stdin": op.stdin} if op.stdin is not None else {}),
        }
    if isinstance(op, ops.Undo):
        return {"op": name, "role": op.role, "command": op.command.masked(), "on": op.on, "what": op.what}
    if isinstance(op, ops.Release):
        return {"op": name, "role": op.role, "what": op.what}
    if isinstance(op, ops.Manual):
        return {"op": name, "text": op.text, **({"shell": op.shell} if op.shell else {})}
    if isinstance(op, ops.Guard):
        return {"op": name, "role": op.role, "probe": op.probe.masked(), "refuse": op.verdict.describe()}
    return {"op": name, "what": op.what, "from": _end(op.src), "to": _end(op.dst)}


def _end(end: ops.Endpoint) -> dict[str, Any]:
    if isinstance(end, ops.HostCommand):
        return {"host_command": end.command.masked(), "role": end.role}
    if isinstance(end, ops.SnapshotObject):
        return {"snapshot_object": end.name, "kind": end.kind, "chain": end.chain}
    if isinstance(end, ops.DuplicityCollection):
        return {
            "duplicity": end.url,
            "file_to_restore": end.file_to_restore,
            "time": end.time,
            "unpack": end.unpack,
        }
    if isinstance(end, ops.Bucket):
        return {"bucket": end.bucket, "gateway": end.gateway, "create": end.create}
    return {"key_store": end.describe()}
