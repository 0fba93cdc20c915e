"""Break-glass blocks without hosts: no secret value in any block of any recipe, a chain's
archives listed full first with the real names, sizes and sums, and the remote command line
exactly the one ``recipes`` sends (``Command.wire``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipes import apps, breakglass, config, ops, runbook
from recipes import manifest as mf
from recipes.model import Command, Secret
from recipes.plan import restore_plan
from recipes.recipe import make_params

SENTINEL = "sentinel-SECRET-4711"
SECRET_ENVS = ("MYSQL_ROOT_PASSWORD", "PGPASSWORD", "GOVUK_OFFSITE_PASSPHRASE", "DB_PASSWORD")

RECIPE_VALUES: dict[str, list[dict[str, object]]] = {
    "django": [
        {"root": "/srv/x", "postgres": {"password_env": "PGPASSWORD"}, "sqlite": ["/var/opt/a.db"]},
        {"root": "/", "mysql": {"password_env": "MYSQL_ROOT_PASSWORD"}},
    ],
    "looker": [{}],
    "dss": [{}],
    "deis": [{"gateway": "http://deis-store.example"}],
    "govuk-datastore": [{}],
    "govuk-assets": [{}],
}


def _manifest(snapshot: str, level: int, parent: str | None, names: list[str]) -> mf.Manifest:
    objects = tuple(
        mf.StoredObject(n, "files", f"{n}.zst.age", 100 + i, f"{snapshot[-1]}{i:063x}")
        for i, n in enumerate(names)
    )
    return mf.Manifest(
        snapshot, "django", "web1", "2026-11-22T10:15:00Z", "2026-11-22T10:16:00Z", {}, objects,
        level=level, parent=parent,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("recipe", "values"), [(r, v) for r, vs in RECIPE_VALUES.items() for v in vs], ids=lambda x: str(x)[:20]
)
def test_no_secret_value_in_any_block(
    recipe: str, values: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    for env in SECRET_ENVS:
        monkeypatch.setenv(env, SENTINEL)
    r = apps.get(recipe)
    plan = restore_plan(r, make_params(r, values, "test"), "web2")
    text = "\n".join(
        f"{b.title}\n{b.script}\n{b.check}" for b in breakglass.blocks(plan, "/var/backups/recipes")
    )
    assert SENTINEL not in text
    assert "ssh" in text


def test_a_secret_reaches_the_host_on_stdin_named_in_the_first_block() -> None:
    r = apps.get("django")
    plan = restore_plan(r, make_params(r, RECIPE_VALUES["django"][0], "test"), "web2")
    blocks = breakglass.blocks(plan, "/repo")
    assert ': "${PGPASSWORD:?' in blocks[0].script
    load = next(b for b in blocks if "load postgresql" in b.title).script
    assert "{ printf '%s\\n' \"$PGPASSWORD\"; age -d" in load  # a bash builtin: never in argv


def test_a_chain_lists_every_archive_full_first_with_its_real_sum() -> None:
    r = apps.get("django")
    plan = restore_plan(r, make_params(r, {"root": "/srv/x", "sqlite": ["/var/opt/a.db"]}, "test"), "web2")
    dump = "dumps/sqlite-var-opt-a.db.sql"
    full = _manifest("20261122T101500Z-aaaaa0", 0, None, ["files.tar", "files.snar", dump])
    inc1 = _manifest("20261123T101500Z-bbbbb1", 1, full.snapshot, ["files.tar", "files.snar", dump])
    inc2 = _manifest("20261124T101500Z-ccccc2", 2, inc1.snapshot, ["files.tar", "files.snar", dump])
    blocks = breakglass.blocks(plan, "/repo", inc2, chain=[full, inc1, inc2])
    verify, extract = blocks[1].script, next(b for b in blocks if "extract files" in b.title).script
    for i, m in enumerate((full, inc1, inc2)):
        files = m.object("files.tar")
        assert files is not None
        assert f'S{i}="$REPO/django/web1/{m.snapshot}"' in verify
        assert f"{files.sha256}  $S{i}/files.tar.zst.age" in verify
        assert f"-eq {files.size} ||" in verify
    reads = [line for line in extract.splitlines() if line.startswith("age -d")]
    assert [r.split('"')[3] for r in reads] == [f"$S{i}/files.tar.zst.age" for i in range(3)]
    full_line, *incrementals = [line for line in extract.splitlines() if line.startswith("age -d")]
    assert "--listed-incremental=/dev/null" not in full_line
    assert all("--listed-incremental=/dev/null" in line for line in incrementals)
    # the dump comes from the restored snapshot alone
    (sqlite,) = [b for b in blocks if "load sqlite" in b.title]
    assert '"$S2/dumps/sqlite-var-opt-a.db.sql.zst.age"' in sqlite.script
    assert "$S0/dumps" not in verify and "$S1/dumps" not in verify


def test_the_remote_line_is_the_one_recipes_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW", SENTINEL)
    for command in (
        Command("psql -X"),
        Command('PGPASSWORD="$PGPASSWORD" psql', (("PGPASSWORD", Secret("PW")),)),
        Command("psql -X", (("A", Secret("PW")),), user="postgres"),
    ):
        for sudo in (False, True):
            line, stdin = command.wire(sudo=sudo)
            assert breakglass.remote_line(command, sudo) == line
            assert SENTINEL.encode() in stdin or not command.secrets


def _ssh_lines(text: str) -> list[str]:
    """The remote line of every ``ssh`` the blocks run (after ``ssh [-n] "$HOST"`` / ``c=``)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("c='"):
            out.append(line)
        elif (
            line.startswith("undo '") and '"$HOST"' in line
        ):  # the same line, quoted once more for the exit trap
            out.append(line.split('"$HOST" ', 1)[1].replace("'\"'\"'", "'"))
        elif '"$HOST" \'' in line or '"$H" \'' in line:
            out.append(line.split('"$HOST" ' if '"$HOST"' in line else '"$H" ', 1)[1])
    return out


@pytest.mark.parametrize("recipe", list(RECIPE_VALUES))
def test_a_sudo_host_gets_every_command_through_sudo_as_recipes_sends_it(recipe: str) -> None:
    r = apps.get(recipe)
    plan = restore_plan(r, make_params(r, RECIPE_VALUES[recipe][0], "test"), "web2")
    plain = "\n".join(b.script for b in breakglass.blocks(plan, "/repo"))
    blocks = breakglass.blocks(plan, "/repo", sudo=True)
    text = "\n".join(b.script for b in blocks)
    lines = _ssh_lines(text)
    assert lines and len(lines) == len(_ssh_lines(plain))
    assert all(line.startswith(("'sudo -n -- ", "c='sudo -n -- ")) for line in lines), lines
    assert not any("sudo -n -- " in line for line in _ssh_lines(plain))
    assert "through `sudo -n`" in blocks[0].script


def test_the_runbook_runs_the_blocks_through_sudo_for_a_sudo_host(tmp_path: Path) -> None:
    text = (
        '[repository]\nurl = "/var/backups/recipes"\n'
        '[hosts.web1]\naddress = "203.0.113.5"\nuser = "deploy"\nsudo = true\n'
        '[hosts.web2]\naddress = "203.0.113.6"\n'
        '[recipes.django]\nroot = "/srv/site"\n'
    )
    (tmp_path / "recipes.toml").write_text(text)
    cfg = config.load(str(tmp_path / "recipes.toml"))
    sudo, plain = (runbook.for_config(cfg, "django", h).split("Break-glass")[-1] for h in ("web1", "web2"))
    assert 'ssh -n "$HOST" \'sudo -n -- bash -c ' in sudo
    assert "sudo -n -- " not in plain and 'ssh -n "$HOST" \'bash -c ' in plain


def test_the_allowed_signers_lines_name_the_identity_and_namespace() -> None:
    text = breakglass.allowed_signers(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ tests@controller"])
    assert text == 'recipes namespaces="recipes-manifest" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ\n'


def test_a_guard_refuses_before_any_step() -> None:
    r = apps.get("django")
    plan = restore_plan(r, make_params(r, {"root": "/srv/x"}, "test"), "web2")
    blocks = breakglass.blocks(plan, "/repo")
    (guards,) = [i for i, b in enumerate(blocks) if b.title.startswith("Refuse early")]
    first_step = next(i for i, b in enumerate(blocks) if b.title.startswith("1."))
    assert guards < first_step and "exit 1" in blocks[guards].script
    assert isinstance(next(op for op in plan.ops() if isinstance(op, ops.Guard)).verdict, ops.MustBeEmpty)


def test_the_runbook_prints_the_allowed_signers_lines_that_verify_a_manifest(tmp_path: Path) -> None:
    """The prerequisites hold the configured signers as allowed-signers lines (public keys only):
    written to a file as printed, ``ssh-keygen -Y verify`` accepts a manifest signed by recipes."""
    import re
    import subprocess

    from recipes import signing

    key = signing.generate_signing_key(tmp_path / "signing_key", "ops@controller")
    (tmp_path / "recipes.toml").write_text(
        f'[repository]\nurl = "/var/backups/recipes"\nsigners = ["{key.public.line}"]\n'
        '[hosts.web1]\naddress = "203.0.113.5"\n[recipes.django]\nroot = "/srv/site"\n'
    )
    text = runbook.for_config(config.load(str(tmp_path / "recipes.toml")), "django", "web1")
    prereq = text.split("## Prerequisites")[1].split("\n## ")[0]
    (printed,) = re.findall(r"\n```\n(.*?)\n```\n", prereq, re.S)
    assert printed + "\n" == breakglass.allowed_signers([key.public.line])
    assert "PRIVATE" not in prereq and key.private_text() not in text
    (tmp_path / "allowed").write_text(printed + "\n")
    data = b'{"snapshot": "x"}\n'
    (tmp_path / "manifest.sig").write_bytes(key.sign(data, breakglass.MANIFEST_NAMESPACE))
    verify = ["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", breakglass.SIGNER_IDENTITY]
    verify += ["-n", breakglass.MANIFEST_NAMESPACE, "-s", str(tmp_path / "manifest.sig")]
    done = subprocess.run(verify, input=data, capture_output=True)
    assert done.returncode == 0, done.stderr
    forged = subprocess.run(verify, input=data + b" ", capture_output=True)
    assert forged.returncode != 0


@pytest.mark.parametrize("indent", [None, "\t"])
def test_the_metadata_mapper_renames_only_keys(indent: str | None, tmp_path: Path) -> None:
    """rclone's --metadata-mapper input (compact or indented): the local keys dropped, the tar's
    ``s3.*`` ones made the content type and user metadata again; values that look like keys stay."""
    import json
    import subprocess

    meta = {
        "atime": "2026-11-24T00:46:06Z",
        "btime": "2026-11-24T00:46:04Z",
        "gid": "0",
        "mode": "100644",
        "mtime": "2026-11-24T00:46:04Z",
        "s3.content-type": "application/x-lzop",
        "s3.meta.mode": 'v,"s3.meta.z", "atime": "1"',
        "s3.meta.wal-e-version": "0.8.1",
        "uid": "0",
    }
    blob = {"SrcFs": "x", "Remote": 'c/"s3.meta.q', "Metadata": meta}
    program = tmp_path / breakglass.MAPPER
    program.write_text("\n".join(breakglass.S3_MAPPER) + "\n")
    out = subprocess.run(
        ["sed", "-zEf", str(program)], input=json.dumps(blob, indent=indent), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Metadata"] == {
        "content-type": "application/x-lzop",
        "mode": 'v,"s3.meta.z", "atime": "1"',
        "wal-e-version": "0.8.1",
    }
    only_local = {"Metadata": {k: v for k, v in meta.items() if not k.startswith("s3.")}}
    out = subprocess.run(
        ["sed", "-zEf", str(program)],
        input=json.dumps(only_local, indent=indent),
        capture_output=True,
        text=True,
    )
    assert json.loads(out.stdout) == {"Metadata": {}}


def test_a_name_that_is_not_plain_is_never_written_into_a_script() -> None:
    """Object paths and snapshot ids go into the script unquoted: anything but a plain name
    (a forged or unread manifest's ``$(…)``, spaces, ``..``) is refused before a line is made."""
    import attrs

    r = apps.get("django")
    plan = restore_plan(r, make_params(r, {"root": "/srv/x"}, "test"), "web2")
    good = _manifest("20261122T101500Z-aaaaa0", 0, None, ["files.tar", "files.snar"])
    for bad in ("files.tar.zst.age$(touch x)", "../files.tar.zst.age", "files tar.zst.age"):
        obj = attrs.evolve(good.objects[0], path=bad)
        forged = attrs.evolve(good, objects=(obj, *good.objects[1:]))
        with pytest.raises(ValueError, match="not a plain name"):
            breakglass.blocks(plan, "/repo", forged, chain=[forged])
    assert breakglass.blocks(plan, "/repo", good, chain=[good])
