"""``recipes verify``: real snapshots checked without a key (signatures, chains, sizes, sha256)
and with ``--deep`` (every object read through: archives listed by tar, dumps checked at both
ends); any mismatch is exit 3 naming the snapshot and the object."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import attrs

from recipes import manifest as mf
from recipes import signing, stream
from tests.integration.django_site import SQLITE_DB, seed_tree
from tests.integration.world import World


def _snapshots(world: World, root: str) -> list[str]:
    sets = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    out = []
    for _ in range(2):  # a full and an incremental on it
        proc = world.cli("--json", "run", "django", "--host", "source", *sets, check=True)
        out.append(json.loads(proc.stdout)["snapshot"])
    return out


def test_verify_all_without_a_key_and_deep_with_it(world: World, site: tuple[str, Path, Path]) -> None:
    root, src, _ = site
    seed_tree(src)
    full, incr = _snapshots(world, root)
    ok = world.cli("--json", "verify", "--all", "--identity", "/nonexistent")  # no key needed
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and [s["snapshot"] for s in report["snapshots"]] == [full, incr]
    deep = world.cli("verify", incr[:18], "--deep")
    assert deep.returncode == 0, deep.stderr
    assert deep.stdout.startswith(f"ok     django@source {incr}")


def test_a_damaged_object_and_a_broken_chain_are_exit_3_naming_them(
    world: World, site: tuple[str, Path, Path]
) -> None:
    root, src, _ = site
    seed_tree(src)
    full, incr = _snapshots(world, root)
    obj = next((world.repo / "django/source" / incr / "dumps").glob("*.zst.age"))
    data = bytearray(obj.read_bytes())
    data[-5] ^= 1
    obj.write_bytes(bytes(data))
    bad = world.cli("verify", incr)
    assert bad.returncode == 3, bad.stderr
    assert f"dumps/{obj.name} of snapshot {incr}" in bad.stderr.strip().splitlines()[-1]
    shutil.rmtree(world.repo / "django/source" / full)
    broken = world.cli("verify", "--all")
    assert broken.returncode == 3
    assert f"snapshot {incr}: its chain" in broken.stdout and full in broken.stdout


def test_an_unsigned_snapshot_is_exit_3_and_allow_unsigned_lets_it_through(
    world: World, site: tuple[str, Path, Path]
) -> None:
    root, src, _ = site
    seed_tree(src)
    full, _ = _snapshots(world, root)
    (world.repo / "django/source" / full / "manifest.sig").unlink()
    refused = world.cli("verify", full)
    assert refused.returncode == 3 and "not signed" in refused.stderr
    assert world.cli("verify", full, "--allow-unsigned").returncode == 0


def test_deep_finds_what_sha256_cannot_a_signed_object_that_is_not_a_tar(
    world: World, site: tuple[str, Path, Path]
) -> None:
    """The key holder signed a manifest over garbage (a compromised controller, a bug): sizes
    and sha256 match, only reading it through shows it."""
    root, src, _ = site
    seed_tree(src)
    full, _ = _snapshots(world, root)
    d = world.repo / "django/source" / full
    manifest = mf.loads((d / "manifest.json").read_text())
    target = manifest.object("files.tar")
    assert target is not None
    with open(d / target.path, "wb") as fh:
        info = stream.store(io.BytesIO(b"not a tar archive\n" * 100), fh, [world.recipient], compressed=False)
    objects = tuple(
        o if o.name != "files.tar" else mf.StoredObject(o.name, o.kind, o.path, info.size, info.sha256)
        for o in manifest.objects
    )
    text = mf.dumps(attrs.evolve(manifest, objects=objects)).encode()
    key = signing.load_signing_key(str(world.signing_key))
    (d / "manifest.sig").write_bytes(key.sign(text, signing.MANIFEST_NAMESPACE))
    (d / "manifest.json").write_bytes(text)
    assert world.cli("verify", full).returncode == 0
    deep = world.cli("verify", full, "--deep")
    assert deep.returncode == 3
    assert f"files.tar.zst.age of snapshot {full}: GNU tar cannot list it" in deep.stderr


def test_deep_reads_each_object_once_and_still_names_a_damaged_one(
    world: World, site: tuple[str, Path, Path]
) -> None:
    """Deep reads an object once, checking its size and sha256 as it decrypts: an archive swapped
    for another good one (it decrypts and lists), bytes appended, a flipped byte are all exit 3,
    named with the precise cause."""
    root, src, _ = site
    seed_tree(src)
    full, incr = _snapshots(world, root)
    archive = world.repo / "django/source" / full / "files.tar.zst.age"
    original = archive.read_bytes()
    shutil.copyfile(world.repo / "django/source" / incr / "files.tar.zst.age", archive)
    swapped = world.cli("verify", full, "--deep")
    assert swapped.returncode == 3, swapped.stderr
    assert f"files.tar.zst.age of snapshot {full}" in swapped.stderr
    archive.write_bytes(original)
    with archive.open("ab") as fh:
        fh.write(b"\0" * 4096)
    appended = world.cli("verify", full, "--deep")
    assert appended.returncode == 3, appended.stderr
    assert f"files.tar.zst.age of snapshot {full}" in appended.stderr
    assert "the manifest says" in appended.stderr  # named by size, not a vague decrypt error
    dump = next((world.repo / "django/source" / incr / "dumps").glob("*.zst.age"))
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 1
    dump.write_bytes(bytes(data))
    flipped = world.cli("verify", incr, "--deep")
    assert flipped.returncode == 3, flipped.stderr
    assert f"dumps/{dump.name} of snapshot {incr}" in flipped.stderr
    assert "sha256 differs" in flipped.stderr


def test_deep_in_process_when_age_and_zstd_are_not_programs_here(
    world: World, site: tuple[str, Path, Path]
) -> None:
    """Without an identity file (or without the age and zstd programs) --deep decrypts in-process:
    the same verdicts, a good snapshot passes and a swapped archive is named."""
    from recipes import config, verify
    from recipes.repository import Repository

    root, src, _ = site
    seed_tree(src)
    full, incr = _snapshots(world, root)
    repo = Repository(str(world.repo))
    trust = config.load(str(world.config)).trust()
    identities = stream.load_identities(str(world.identity))

    def deep(sid: str) -> verify.Report:
        (item,) = [i for i in repo.listed(None, None) if i.manifest.snapshot == sid]
        return verify.verify(repo, item, trust, deep=True, identities=identities)

    assert deep(full).ok and deep(incr).ok
    shutil.copyfile(
        world.repo / "django/source" / incr / "files.tar.zst.age",
        world.repo / "django/source" / full / "files.tar.zst.age",
    )
    report = deep(full)
    assert [p.object for p in report.problems] == ["files.tar.zst.age"]
    assert "the manifest says" in report.problems[0].reason  # named by the re-check, precisely


def test_deep_names_every_damaged_object_of_a_snapshot_checked_side_by_side(
    world: World, site: tuple[str, Path, Path]
) -> None:
    """The objects of a snapshot are checked two at a time (the archive with a dump beside it):
    an archive swapped and a dump flipped in the same snapshot are both named, exit 3."""
    root, src, _ = site
    seed_tree(src)
    full, incr = _snapshots(world, root)
    base = world.repo / "django/source" / incr
    shutil.copyfile(world.repo / "django/source" / full / "files.tar.zst.age", base / "files.tar.zst.age")
    dump = next((base / "dumps").glob("*.zst.age"))
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 1
    dump.write_bytes(bytes(data))
    bad = world.cli("--json", "verify", incr, "--deep")
    assert bad.returncode == 3, bad.stderr
    (report,) = json.loads(bad.stdout)["snapshots"]
    named = {p["object"]: p["reason"] for p in report["problems"]}
    assert set(named) == {"files.tar.zst.age", f"dumps/{dump.name}"}
    assert "sha256 differs" in named[f"dumps/{dump.name}"]
    assert f"of snapshot {incr}" in bad.stderr
