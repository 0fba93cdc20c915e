"""A forger with write access to the repository and the public keys only (recipients, signers):
every forged or replayed snapshot is refused with exit 3 before any byte reaches the target and
before any command runs there. Then hostile archives inside validly signed snapshots (a
compromised source host): what GNU tar does with each is recorded in docs/security.md.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recipes import manifest as mf
from recipes import signing, stream
from tests import servers
from tests.integration.django_site import seed_tree
from tests.integration.world import World

SNAP = "20301010T101010Z-f0f0f0"
CHILD = "20301010T101011Z-f1f1f1"


@pytest.fixture
def outside(ssh_target: servers.SshHost) -> Iterator[tuple[str, Path]]:
    """A directory on the target host outside any restore root, where payloads would land."""
    name = f"outside-{uuid.uuid4().hex[:8]}"
    path = Path(ssh_target.binds["/srv/site"]) / name
    path.mkdir()
    yield f"/srv/site/{name}", path
    shutil.rmtree(path, ignore_errors=True)


def tar_bytes(members: list[tuple[str, dict[str, object], bytes]]) -> bytes:
    """A GNU tar with exactly these members (name, TarInfo attributes, content)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, attrs, data in members:
            info = tarfile.TarInfo(name)
            for k, v in attrs.items():
                setattr(info, k, v)
            if info.type == tarfile.REGTYPE:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def forge(
    world: World,
    host: str,
    snapshot: str,
    objects: dict[str, bytes],
    *,
    level: int = 0,
    parent: str | None = None,
    params: dict[str, object] | None = None,
    sign_with: signing.SigningKey | None = None,
    signature: bytes | None = None,
) -> Path:
    """Write a snapshot the way the tool would, from plain objects encrypted to the recipients."""
    d = world.repo / "django" / host / snapshot
    stored = []
    for name, plain in objects.items():
        path = f"{name}.zst.age"
        (d / path).parent.mkdir(parents=True, exist_ok=True)
        with open(d / path, "wb") as fh:
            info = stream.store(io.BytesIO(plain), fh, [world.recipient], compressed=False)
        kind = "dump" if name.startswith("dumps/") else "files"
        engine = name.removeprefix("dumps/").removesuffix(".sql") if kind == "dump" else None
        stored.append(mf.StoredObject(name, kind, path, info.size, info.sha256, engine=engine))
    m = mf.Manifest(
        snapshot=snapshot,
        recipe="django",
        host=host,
        started="2030-10-10T10:10:10Z",
        finished="2030-10-10T10:10:10Z",
        params=params or {},
        objects=tuple(stored),
        level=level,
        parent=parent,
        recipients=(world.recipient,),
    )
    text = mf.dumps(m).encode()
    if sign_with is not None:
        (d / "manifest.sig").write_bytes(sign_with.sign(text, signing.MANIFEST_NAMESPACE))
    elif signature is not None:
        (d / "manifest.sig").write_bytes(signature)
    (d / "manifest.json").write_bytes(text)
    return d


def restore(world: World, root: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return world.cli(
        "restore", "django", "--host", "target", "--from", "source", "--set", f"root={root}", *extra
    )


def assert_refused(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("recipes: error: ") and "Traceback" not in proc.stderr
    for w in words:
        assert w in last, last


def symlink_chain(world: World, outside: str, **sign: object) -> None:
    """The attack that once restored with exit 0: a full plants a symlink out of the root, the
    incremental writes a file through it."""
    forge(
        world,
        "source",
        SNAP,
        {"files.tar": tar_bytes([("./link", {"type": tarfile.SYMTYPE, "linkname": outside}, b"")])},
        **sign,  # type: ignore[arg-type]
    )
    forge(
        world,
        "source",
        CHILD,
        {"files.tar": tar_bytes([("./link/planted.txt", {}, b"payload\n")])},
        level=1,
        parent=SNAP,
        **sign,  # type: ignore[arg-type]
    )


def test_an_unsigned_forged_chain_is_refused_before_the_target_is_touched(
    world: World, site: tuple[str, Path, Path], outside: tuple[str, Path]
) -> None:
    root, _, dst = site
    symlink_chain(world, outside[0])
    proc = restore(world, root)
    assert_refused(proc, CHILD, "not signed", "--allow-unsigned")
    assert not dst.exists() and not (outside[1] / "planted.txt").exists()
    listed = world.cli("snapshots", "django", check=True).stdout
    assert "UNTRUSTED" in listed


def test_a_chain_signed_by_a_key_that_is_not_a_signer_is_refused(
    world: World, site: tuple[str, Path, Path], outside: tuple[str, Path], tmp_path: Path
) -> None:
    root, _, dst = site
    own = signing.generate_signing_key(tmp_path / "forger_key", "forger@evil")
    symlink_chain(world, outside[0], sign_with=own)
    proc = restore(world, root)
    assert_refused(proc, CHILD, own.public.fingerprint)
    assert not dst.exists() and not (outside[1] / "planted.txt").exists()
    # --allow-unsigned does not let a wrongly signed snapshot through either
    assert_refused(restore(world, root, "--allow-unsigned"), CHILD)


def test_a_real_signature_moved_onto_a_forged_manifest_is_refused(
    world: World, site: tuple[str, Path, Path]
) -> None:
    root, src, dst = site
    seed_tree(src)
    world.cli("run", "django", "--host", "source", "--set", f"root={root}", check=True)
    (real,) = world.repo.glob("django/source/*/manifest.sig")
    forge(
        world,
        "source",
        SNAP,
        {"files.tar": tar_bytes([("./etc/motd", {}, b"forged\n")])},
        signature=real.read_bytes(),
    )
    assert_refused(restore(world, root), SNAP, "signature")
    assert not dst.exists()


def test_a_signed_snapshot_replayed_under_another_host_is_refused(
    world: World, site: tuple[str, Path, Path]
) -> None:
    root, src, dst = site
    seed_tree(src)
    world.cli("run", "django", "--host", "source", "--set", f"root={root}", check=True)
    (real,) = world.repo.glob("django/source/*/manifest.json")
    shutil.copytree(real.parent, world.repo / "django/target" / real.parent.name)
    proc = world.cli("restore", "django", "--host", "target", "--set", f"root={root}")
    assert_refused(proc, "lies at")
    assert not dst.exists()


@pytest.mark.parametrize(
    ("dump", "params"),
    [
        (
            "dumps/postgresql.sql",
            {"postgres": True},
        ),
        ("dumps/sqlite-var-opt-mysite-mysite.db.sql", {"sqlite": ["/var/opt/mysite/mysite.db"]}),
    ],
)
def test_forged_dumps_that_would_run_commands_are_refused(
    world: World,
    site: tuple[str, Path, Path],
    outside: tuple[str, Path],
    dump: str,
    params: dict[str, object],
) -> None:
    """A PostgreSQL dump with COPY ... TO PROGRAM and an SQLite dump with .shell: each would run
    a command on the target as postgres or root. No payload file may appear."""
    root, _, dst = site
    marker = f"{outside[0]}/pwned"
    payload = {
        "dumps/postgresql.sql": f"COPY (SELECT 1) TO PROGRAM 'touch {marker}';\n",
        "dumps/sqlite-var-opt-mysite-mysite.db.sql": f".shell touch {marker}\n",
    }[dump]
    forge(
        world,
        "source",
        SNAP,
        {"files.tar": tar_bytes([("./etc/motd", {}, b"x\n")]), dump: payload.encode()},
        params=params,
    )
    assert_refused(restore(world, root, *(f"--set={k}={json.dumps(v)}" for k, v in params.items())))
    assert not (outside[1] / "pwned").exists()
    assert not dst.exists()


def test_an_object_swapped_for_a_same_size_one_is_refused_before_writing(
    world: World, site: tuple[str, Path, Path]
) -> None:
    """The stored dump replaced by another encryption of the same bytes: the same size, not the
    same sha256 (age uses a fresh file key each time). A size check alone would restore it."""
    import io

    import pyrage

    from recipes import agestream

    root, src, dst = site
    seed_tree(src)
    sets = ["--set", f"root={root}", "--set", 'sqlite=["/var/opt/mysite/mysite.db"]']
    world.cli("run", "django", "--host", "source", *sets, check=True)
    (obj,) = world.repo.glob("django/source/*/dumps/*.sql.zst.age")
    identity = pyrage.x25519.Identity.from_str(world.identity.read_text().strip())
    compressed = io.BytesIO(pyrage.decrypt(obj.read_bytes(), [identity]))
    key = agestream.x25519_key(world.recipient)
    assert key is not None
    out = io.BytesIO()  # the writer recipes uses: no random padding, so the same size every time
    agestream.encrypt(compressed.read, out.write, [key], 1 << 20)
    other = out.getvalue()
    assert len(other) == obj.stat().st_size and other != obj.read_bytes()
    obj.write_bytes(other)
    proc = restore(world, root)
    assert_refused(proc, "sqlite", "sha256")
    assert not dst.exists()


# Hostile archives inside snapshots signed with the controller's own key: what a compromised
# SOURCE host could send. Each row: members, tar's exit, what must (not) exist afterwards.
# docs/security.md records the same table.
HOSTILE = {
    "dotdot": ([("../escape.txt", {}, b"x")], 1, "escape.txt"),
    "absolute": ([("{outside}/abs.txt", {}, b"x")], 0, "abs.txt"),
    "symlink_then_file": (
        [("./link", {"type": tarfile.SYMTYPE, "linkname": "{outside}"}, b""), ("./link/f.txt", {}, b"x")],
        1,
        "f.txt",
    ),
    "hardlink_outside": (
        [("./hl", {"type": tarfile.LNKTYPE, "linkname": "{outside}/victim.txt"}, b"")],
        1,
        None,
    ),
    "setuid": ([("./suid", {"mode": 0o4755}, b"#!/bin/sh\n")], 0, None),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_in_a_signed_snapshot(
    world: World, site: tuple[str, Path, Path], outside: tuple[str, Path], case: str
) -> None:
    root, _, dst = site
    (outside[1] / "victim.txt").write_text("victim\n")
    members, exit_code, escaped = HOSTILE[case]
    members = [
        (
            n.format(outside=outside[0]),
            {k: (v.format(outside=outside[0]) if isinstance(v, str) else v) for k, v in a.items()},
            d,
        )
        for n, a, d in members
    ]
    key = signing.load_signing_key(str(world.signing_key))
    forge(world, "source", SNAP, {"files.tar": tar_bytes(members)}, sign_with=key)
    proc = restore(world, root)
    assert proc.returncode == exit_code, proc.stderr
    assert (outside[1] / "victim.txt").read_text() == "victim\n"
    if escaped is not None:
        assert not (outside[1] / escaped).exists()
        assert not (Path(outside[1]).parent / escaped).exists()
    if case == "absolute":  # the leading / is stripped: it lands inside the root
        assert (dst / outside[0].lstrip("/") / "abs.txt").exists()
    if case == "setuid":  # restored as recorded: a restore is as trusted as its source host
        assert (dst / "suid").stat().st_mode & 0o7777 == 0o4755
    if case == "hardlink_outside":
        assert not (dst / "hl").exists()


def test_hostile_chain_through_a_symlink_is_a_known_limit(
    world: World, site: tuple[str, Path, Path], outside: tuple[str, Path]
) -> None:
    """The symlink chain, signed by the controller's key (a compromised source host): GNU tar
    follows a symlink that an earlier archive of the chain left on disk. docs/security.md says so;
    this test pins the behaviour so a fix (or a regression) is noticed."""
    root, _, _ = site
    key = signing.load_signing_key(str(world.signing_key))
    symlink_chain(world, outside[0], sign_with=key)
    proc = restore(world, root)
    assert proc.returncode == 0, proc.stderr
    assert (outside[1] / "planted.txt").read_text() == "payload\n"


def test_a_genuine_incremental_on_a_forged_full_is_refused(
    world: World, site: tuple[str, Path, Path], outside: tuple[str, Path]
) -> None:
    """The incremental is real and signed; its parent full is swapped for a forged one under the
    same id. Every manifest of the chain is checked, not only the one asked for."""
    root, src, dst = site
    seed_tree(src)
    sets = ["--set", f"root={root}"]
    full = json.loads(world.cli("--json", "run", "django", "--host", "source", *sets, check=True).stdout)
    (src / "etc/hostname").write_text("changed\n")
    world.cli("run", "django", "--host", "source", *sets, check=True)
    shutil.rmtree(world.repo / "django/source" / full["snapshot"])
    members = [("./link", {"type": tarfile.SYMTYPE, "linkname": outside[0]}, b"")]
    forge(world, "source", full["snapshot"], {"files.tar": tar_bytes(members)}, params=full["params"])
    proc = restore(world, root)
    assert_refused(proc, full["snapshot"], "not signed")
    assert not dst.exists()
