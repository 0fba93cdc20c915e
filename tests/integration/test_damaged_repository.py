"""A local repository with things in it that recipes never writes (a folder where a manifest, a
signature, an object or a lock goes; a file where a folder goes) and snapshots whose manifest
cannot be read: each is one ``recipes: error:`` line naming the path, or a snapshot listed and
skipped as DAMAGED, never a traceback, and a damaged snapshot asked for is never passed over.

Real CLI runs through the local host, on a controller of their own (``recipes init``); the drill,
which needs a scratch host apart from the source, over real SSH (the ``world`` fixture)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.django_site import SQLITE_DB, seed_tree
from tests.integration.world import World

GARBLED = '{"x\n'


class Controller:
    """HOME, cache and config from ``recipes init``; a full then an incremental of a local tree."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.site = tmp / "site"
        self.repo = tmp / "repo"
        (self.site / "sub").mkdir(parents=True)
        for i in (1, 2, 3):
            (self.site / f"f{i}.txt").write_text(f"file {i}\n")
        self.env = {**os.environ, "HOME": str(tmp), "XDG_CACHE_HOME": str(tmp / "cache")}
        self.env.pop("RECIPES_CONFIG", None)
        self.cli("init", "--repo", str(self.repo), check=True)
        self.cli(*self.run_args(), check=True)
        self.cli(*self.run_args(), check=True)
        self.here = self.repo / "django" / "local"
        self.s1, self.s2 = sorted(p.name for p in self.here.iterdir())

    def run_args(self) -> list[str]:
        return ["run", "django", "--host", "local", "--set", f"root={self.site}"]

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "recipes", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.tmp,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"recipes {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def fails(self, code: int, *args: str) -> str:
        """Run; assert exit ``code``, no traceback, the last stderr line the one error; return it."""
        proc = self.cli(*args)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == code, (proc.returncode, proc.stderr)
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("recipes: error: "), proc.stderr
        return line


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Controller:
    return Controller(tmp_path_factory.mktemp("damaged"))


@pytest.fixture
def ctl(pristine: Controller) -> Iterator[Controller]:
    """The module's controller with its repository as the two runs left it, for each test."""
    saved = pristine.tmp / "repo.saved"
    if not saved.exists():
        shutil.copytree(pristine.repo, saved, symlinks=True)
    yield pristine
    shutil.rmtree(pristine.repo)
    shutil.copytree(saved, pristine.repo, symlinks=True)
    for extra in ("out", "copy", "afile"):
        p = pristine.tmp / extra
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _into_folder(path: Path) -> None:
    path.unlink()
    (path / "stray").mkdir(parents=True)  # not even an empty folder: rmdir would not do


@pytest.mark.parametrize("name", ["manifest.json", "manifest.sig"])
def test_a_folder_in_place_of_a_manifest_or_its_signature_is_a_damaged_snapshot(
    ctl: Controller, name: str
) -> None:
    _into_folder(ctl.here / ctl.s2 / name)
    listed = ctl.cli("snapshots")
    assert listed.returncode == 0, listed.stderr
    assert f"{ctl.s2}  DAMAGED: django/local/{ctl.s2}: {name} is a folder, not a file" in listed.stdout
    assert listed.stdout.startswith(ctl.s1)
    verified = ctl.cli("verify", "--all")
    assert verified.returncode == 3, verified.stderr
    assert f"FAILED django/local/{ctl.s2}: {name} is a folder" in verified.stdout
    assert f"ok     django@local {ctl.s1}" in verified.stdout
    pruned = ctl.cli("prune", "--dry-run")
    assert pruned.returncode == 0 and f"{ctl.s2}: left alone: its manifest cannot be read" in pruned.stdout
    copied = ctl.cli("copy", "--all", "--to", str(ctl.tmp / "copy"))
    assert copied.returncode == 0, copied.stderr
    assert sorted(p.name for p in (ctl.tmp / "copy/django/local").iterdir()) == [ctl.s1]
    out = ctl.tmp / "out"
    restored = ctl.cli("restore", "django", "--host", "local", "--snapshot", ctl.s1, "--set", f"root={out}")
    assert restored.returncode == 0, restored.stderr
    assert (out / "f1.txt").read_text() == "file 1\n"
    ran = ctl.cli("--json", *ctl.run_args())
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["parent"] == ctl.s1  # the damaged one is never a parent


def test_a_folder_manifest_under_another_recipe_breaks_no_whole_repository_command(ctl: Controller) -> None:
    odd = ctl.repo / "looker" / "db1" / "20260101T000000Z-abcdef" / "manifest.json"
    odd.mkdir(parents=True)
    listed = ctl.cli("snapshots")
    assert listed.returncode == 0, listed.stderr
    assert "DAMAGED: looker/db1/20260101T000000Z-abcdef: manifest.json is a folder" in listed.stdout
    verified = ctl.cli("verify", "--all")
    assert verified.returncode == 3 and "FAILED looker/db1/20260101T000000Z-abcdef" in verified.stdout
    assert ctl.cli("prune", "--dry-run").returncode == 0
    copied = ctl.cli("copy", "--all", "--to", str(ctl.tmp / "copy"))
    assert copied.returncode == 0, copied.stderr
    assert sorted(p.name for p in (ctl.tmp / "copy/django/local").iterdir()) == [ctl.s1, ctl.s2]


@pytest.mark.parametrize(
    ("case", "command", "in_the_way", "said"),
    [
        ("repo-is-a-file", "run", "afile", "is a file where a folder must be"),
        ("repo-is-a-file", "snapshots", "afile", "is a file where a folder must be"),
        ("repo-is-a-file", "prune", "afile", "is a file where a folder must be"),
        ("repo-under-a-file", "run", "afile", "is a file where a folder must be"),
        ("repo-under-a-file", "snapshots", "afile", "is a file where a folder must be"),
        ("locks-is-a-file", "run", "repo/locks", "is a file where a folder must be"),
        ("locks-is-a-file", "prune", "repo/locks", "is a file where a folder must be"),
        ("lock-is-a-folder", "run", "repo/locks/django@local", "is a folder where a file must be"),
        ("lock-is-a-folder", "prune", "repo/locks/django@local", "is a folder where a file must be"),
    ],
)
def test_a_file_or_folder_in_the_way_of_the_repository_or_its_lock_is_one_line(
    ctl: Controller, case: str, command: str, in_the_way: str, said: str
) -> None:
    repo = ctl.repo
    if case.startswith("repo-"):
        (ctl.tmp / "afile").write_text("not a repository\n")
        repo = ctl.tmp / ("afile" if case == "repo-is-a-file" else "afile/sub")
    elif case == "locks-is-a-file":
        shutil.rmtree(repo / "locks", ignore_errors=True)
        (repo / "locks").write_text("x\n")
    else:
        (repo / "locks" / "django@local" / "stray").mkdir(parents=True)
    args = ctl.run_args() if command == "run" else [command]
    line = ctl.fails(1, *args, "--repo", str(repo))
    assert f"{ctl.tmp / in_the_way} {said}" in line
    assert "move that" in line  # and what to do about it
    if case == "lock-is-a-folder":  # nothing was written meanwhile
        assert sorted(p.name for p in ctl.here.iterdir()) == [ctl.s1, ctl.s2]


def test_an_object_replaced_by_a_folder_is_exit_3_naming_it_in_deep_verify_and_copy(
    ctl: Controller,
) -> None:
    _into_folder(ctl.here / ctl.s2 / "files.tar.zst.age")
    # a folder's size is the file system's (4096 on ext4, less on tmpfs): never the object's
    said = re.compile(rf"snapshot {ctl.s2}: files\.tar\.zst\.age is \d+ bytes, the manifest says \d+")
    for args in (["verify", "--all"], ["verify", "--all", "--deep"], ["verify", ctl.s2, "--deep"]):
        line = ctl.fails(3, *args)
        assert said.search(line), (args, line)
    line = ctl.fails(3, "copy", "--all", "--to", str(ctl.tmp / "copy"))
    assert said.search(line), line
    assert sorted(p.name for p in (ctl.tmp / "copy/django/local").iterdir()) == [ctl.s1]  # S2 never listed


@pytest.mark.parametrize("what", ["dev-zero", "fifo"])
def test_a_device_or_fifo_in_an_objects_place_is_exit_3_not_a_hang(ctl: Controller, what: str) -> None:
    """Hostile local storage: ``/dev/zero`` (a symlink to it) in an object's place would feed
    age's header search until memory ran out; a FIFO would block the open. Both are the size
    verdict, exit 3, before any program reads them."""
    import os

    obj = ctl.here / ctl.s2 / "files.tar.zst.age"
    obj.unlink()
    if what == "dev-zero":
        obj.symlink_to("/dev/zero")
    else:
        os.mkfifo(obj)
    said = re.compile(rf"snapshot {ctl.s2}: files\.tar\.zst\.age is 0 bytes, the manifest says \d+")
    for args in (["verify", ctl.s2, "--deep"], ["verify", "--all", "--deep"]):
        line = ctl.fails(3, *args)
        assert said.search(line), (args, line)


@pytest.mark.parametrize(
    ("url", "code", "words"),
    [
        ("zip://x", 1, "cannot open it"),  # fsspec's zip filesystem, given no archive
        ("ftp://127.0.0.1:1/x", 1, "cannot open it: [Errno 111] Connection refused"),
        ("nosuchproto://x", 2, "Protocol not known"),
        ("s3://", 2, "no bucket in the URL; give s3://BUCKET/prefix"),
        ("file://", 2, "no path in the URL; give file:///absolute/path"),  # not the cwd
    ],
)
def test_a_repository_url_that_cannot_be_opened_is_one_line(
    ctl: Controller, url: str, code: int, words: str
) -> None:
    """Any fsspec URL is a repository (the design's contract); one that cannot be opened is one
    line naming it, never a traceback."""
    for args in (["snapshots"], ctl.run_args()):
        line = ctl.fails(code, *args, "--repo", url)
        assert f"repository {url}: " in line and words in line, line


def test_any_fsspec_url_is_a_repository(ctl: Controller) -> None:
    out = ctl.cli("snapshots", "--repo", "memory://somewhere")
    assert out.returncode == 0 and "no snapshots in memory://somewhere" in out.stdout, out.stderr


def test_a_damaged_snapshot_asked_for_by_id_is_exit_3_naming_it(ctl: Controller) -> None:
    (ctl.here / ctl.s2 / "manifest.json").write_text(GARBLED)
    named = f"django/local/{ctl.s2}: malformed manifest"
    for args in (
        ["verify", ctl.s2],
        ["verify", ctl.s2[:18]],
        ["restore", "django", "--host", "local", "--snapshot", ctl.s2, "--set", f"root={ctl.tmp}/out"],
        ["copy", ctl.s2, "--to", str(ctl.tmp / "copy")],
        ["runbook", "django", "--host", "local", "--snapshot", ctl.s2],
    ):
        line = ctl.fails(3, *args)
        assert named in line and "(damaged manifest)" in line, (args, line)
    assert not (ctl.tmp / "out").exists() and not (ctl.tmp / "copy").exists()
    as_json = json.loads(ctl.cli("--json", "verify", ctl.s2).stdout)
    assert not as_json["ok"] and as_json["damaged"][0].startswith(named)
    # an unknown id is still "matches 0", exit 1, and says how to see what is there
    assert "matches 0 snapshots" in ctl.fails(1, "verify", "20990101")
    assert "matches 0 snapshots" in ctl.fails(1, "verify", "latest")  # an id, never "the newest"
    assert "give more" not in ctl.fails(1, "verify", "20990101")
    # a prefix of more than one is a usage error, exit 2, asking for more of the id
    for args in (["verify", "20"], ["restore", "django", "--host", "local", "--snapshot", "20"]):
        line = ctl.fails(2, *args)
        assert "matches 2 snapshots" in line and "give more of its id" in line, (args, line)


def test_the_latest_snapshot_damaged_is_refused_not_passed_over(ctl: Controller) -> None:
    (ctl.here / ctl.s2 / "manifest.json").write_text(GARBLED)
    out = ctl.tmp / "out"
    line = ctl.fails(3, "restore", "django", "--host", "local", "--set", f"root={out}")
    assert f"the latest snapshot of django@local is damaged: django/local/{ctl.s2}" in line
    assert "--snapshot ID" in line
    assert not out.exists()  # nothing restored, not even the older snapshot
    line = ctl.fails(3, "runbook", "django", "--host", "local", "--snapshot", "latest")
    assert f"the latest snapshot of django@local is damaged: django/local/{ctl.s2}" in line
    older = ctl.cli("restore", "django", "--host", "local", "--snapshot", ctl.s1, "--set", f"root={out}")
    assert older.returncode == 0, older.stderr
    assert (out / "f3.txt").read_text() == "file 3\n"


def test_a_drill_of_the_damaged_latest_snapshot_is_refused_before_the_scratch_host_is_touched(
    world: World, site: tuple[str, Path, Path]
) -> None:
    """Over real SSH: ``drill`` resolves "latest" as ``restore`` does."""
    root, src, dst = site
    seed_tree(src)
    sets = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    for _ in range(2):
        world.cli("run", "django", "--host", "source", *sets, check=True)
    _, newest = sorted(p.name for p in (world.repo / "django" / "source").iterdir())
    (world.repo / "django" / "source" / newest / "manifest.json").write_text(GARBLED)
    got = world.cli("drill", "django", "--host", "source", "--to-host", "target", *sets)
    assert "Traceback" not in got.stderr and got.returncode == 3, got.stderr
    line = got.stderr.strip().splitlines()[-1]
    assert f"the latest snapshot of django@source is damaged: django/source/{newest}" in line, line
    assert not dst.exists() or not any(dst.iterdir())  # nothing restored onto the scratch host
    assert not (world.repo / "drills").exists()  # and no drill recorded


def test_an_object_missing_from_a_snapshot_is_exit_3_in_copy_and_deep_verify(ctl: Controller) -> None:
    """A signed snapshot without one of its objects is damaged (exit 3), not a storage failure."""
    (ctl.here / ctl.s2 / "files.snar.zst.age").unlink()
    line = ctl.fails(3, "copy", "--all", "--to", str(ctl.tmp / "copy"))
    assert ctl.s2 in line and "files.snar.zst.age" in line, line
    assert sorted(p.name for p in (ctl.tmp / "copy/django/local").iterdir()) == [ctl.s1]  # S2 never listed
    line = ctl.fails(3, "verify", ctl.s2, "--deep")
    assert ctl.s2 in line and "files.snar.zst.age" in line, line
