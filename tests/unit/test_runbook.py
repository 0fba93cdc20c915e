"""Restore runbooks: a golden Markdown runbook per recipe, no secret in any of them, a verified
snapshot's real objects filled in, HTML that escapes every text and prints in real headless
Chromium, and the CLI command (stdout, -o written atomically, one-line errors)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from recipes import apps, config, runbook, signing
from recipes import manifest as mf
from recipes.errors import StepFailed, VerifyError
from recipes.recipe import make_params, split_options
from recipes.repository import Repository

GOLDEN = Path(__file__).parent / "golden" / "runbook"
SENTINEL = "Sentinel-Secret-7f3a91"
SETTINGS = runbook.Settings(
    repo_url="s3://acme-backups/recipes",
    config_path="/etc/recipes/recipes.toml",
    signers=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFrvLvG/1NX1xlgFnLfP8okh7xZxGjXFCE7yhsETCCeJ ops",),
    retention={"full_every": "3M", "max_age": "2Y", "max_fulls_with_incrs": 2},
    host_key_file="~/.ssh/id_ed25519",
)
# Per recipe: parameters that reach every prerequisite kind (passwords, a key store, the GPG
# key and passphrase, the gateway keys).
PARAMS: dict[str, dict[str, Any]] = {
    "django": {
        "root": "/srv/site",
        "postgres": {"host": "db.internal", "password_env": "PGPW"},
        "sqlite": ["/var/opt/mysite/mysite.db"],
        "mysql": {"host": "127.0.0.1", "password_env": "MYPW"},
        "extra_excludes": ["/home/*/.cache"],
    },
    "looker": {
        "keystore_independent": True,
        "master_key_file": "/etc/looker/cmk",
        "key_store": "s3://acme-keys/looker",
        "mysql": {"host": "db", "user": "looker", "password_env": "LOOKER_DB_PW", "database": "looker"},
        "nodes": ["node2"],
    },
    "dss": {"govern_postgres": {"host": "127.0.0.1", "database": "govern", "password_env": "GOVERN_PG_PW"}},
    "deis": {"gateway": "http://deis-store.local3.deisapp.com"},
    "govuk-datastore": {
        "aws_key_env": "GOVUK_AWS_ACCESS_KEY_ID",
        "aws_secret_env": "GOVUK_AWS_SECRET_ACCESS_KEY",
        "mysql": {"host": "db", "user": "root", "password_env": "MYSQL_PW"},
    },
    "govuk-assets": {
        "source": "boto3+s3://govuk-offsite-backups-production/assets-whitehall/",
        "owner": "deploy:deploy",
    },
}
ENV_SECRETS = (
    "PGPW",
    "MYPW",
    "LOOKER_DB_PW",
    "GOVERN_PG_PW",
    "MYSQL_PW",
    "GOVUK_OFFSITE_PASSPHRASE",
    "GOVUK_AWS_ACCESS_KEY_ID",
    "GOVUK_AWS_SECRET_ACCESS_KEY",
    "AWS_SECRET_ACCESS_KEY",
)
DRILL = {
    "format": 1,
    "recipe": "django",
    "host": "web1",
    "scratch": "scratch1",
    "snapshot": "20261120T031500Z-ab12",
    "started": "2026-11-20T04:00:00Z",
    "finished": "2026-11-20T04:03:10Z",
    "passed": True,
    "rto_seconds": 190.0,
    "steps": [{"name": "files", "seconds": 150.0}, {"name": "postgresql", "seconds": 35.5}],
    "checks": [{"name": "rows of public.orders", "ok": True, "expected": "1200", "found": "1200"}],
}


def _params(name: str) -> tuple[Any, Any]:
    r = apps.get(name)
    values, options = split_options(r, json.loads(json.dumps(PARAMS[name])), "test")
    return make_params(r, values, "test"), options


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("RECIPES_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{name} changed: rerun with RECIPES_UPDATE_GOLDEN=1 if intended"


@pytest.mark.parametrize("name", apps.names())
def test_runbook_matches_golden(name: str) -> None:
    params, options = _params(name)
    drill = DRILL if name == "django" else None
    text = runbook.render(apps.get(name), params, "web1", SETTINGS, options=options, drill=drill)
    _check(f"{name}.md", text)


def test_every_golden_has_a_recipe() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.md")) == sorted(apps.names())


@pytest.mark.parametrize("name", apps.names())
def test_runbook_is_rendered_from_the_restore_plans_ops(name: str) -> None:
    """Every masked command of every restore op and every manual step appears in the runbook,
    word for word: the runbook is the plan, not a second description of it."""
    from recipes import plan, render

    params, options = _params(name)
    r = apps.get(name)
    text = runbook.render(r, params, "web1", SETTINGS, options=options)
    p = plan.restore_plan(r, params, "web1", options=options)
    for step in p.steps:
        for op in step.ops():
            for line in render.op_lines(op, p.compression, "restore"):
                assert line in text, line
    for cmd in render.commands(p.ops()):
        assert cmd in text


def test_the_restore_section_names_each_steps_drilled_duration_and_the_drill() -> None:
    params, _options = _params("django")
    text = runbook.render(apps.get("django"), params, "web1", SETTINGS, drill=DRILL)
    files = text.split("### 1. extract files", 1)[1].split("### 2.", 1)[0]
    assert "Expected duration: 2.5 min in the last drill (2026-11-20T04:03:10Z)" in files
    assert "35.5 s in the last drill" in text
    assert "The last drill passed" in text and "rows of public.orders" in text
    without = runbook.render(apps.get("django"), params, "web1", SETTINGS)
    assert "No drill recorded yet" in without and "recipes drill django --host web1" in without


def test_manual_steps_show_in_order_with_govuk_revert_list_and_deis_scale() -> None:
    for name, needle in (
        ("govuk-assets", "revert all the manual actions"),
        ("govuk-datastore", "revert all the manual actions"),
        ("deis", "deis scale <proctype>=0"),
        ("looker", "keystore-independent backup"),
    ):
        params, options = _params(name)
        text = runbook.render(apps.get(name), params, "web1", SETTINGS, options=options)
        manual = text.split("## Manual steps", 1)[1].split("\n## ", 1)[0]
        assert needle in manual, name


def test_prerequisites_name_where_each_key_is_kept() -> None:
    def prereq(name: str) -> str:
        params, options = _params(name)
        text = runbook.render(apps.get(name), params, "web1", SETTINGS, options=options)
        return text.split("## Prerequisites", 1)[1].split("\n## ", 1)[0]

    django = prereq("django")
    assert "~/.config/recipes/identity.txt" in django and "[repository] signers" in django
    assert "`PGPW`" in django and "`MYPW`" in django and "AWS_ACCESS_KEY_ID" in django
    assert "decryption key is stored only on the server itself" in django
    assert "s3://acme-keys/looker" in prereq("looker")
    govuk = prereq("govuk-datastore")
    assert "/etc/recipes/govuk-offsite-secret-key.asc" in govuk and "`GOVUK_OFFSITE_PASSPHRASE`" in govuk
    assert "deisctl config store get gateway/accessKey" in prereq("deis")


def _sign_into(repo_dir: Path, key: signing.SigningKey, m: mf.Manifest) -> None:
    repo = Repository(str(repo_dir))
    repo.writer_for(m).commit(m, lambda data: key.sign(data, signing.MANIFEST_NAMESPACE))


def _manifest(snapshot: str = "20261122T101500Z-cafe", params: dict[str, Any] | None = None) -> mf.Manifest:
    objects = (
        mf.StoredObject("files.tar", "files", "files.tar.zst.age", 123456789, "a" * 64),
        mf.StoredObject("files.snar", "state", "files.snar.zst.age", 2048, "b" * 64),
        mf.StoredObject(
            "dumps/postgresql.sql",
            "dump",
            "dumps/postgresql.sql.zst.age",
            7777,
            "c" * 64,
            engine="postgresql",
        ),
    )
    return mf.Manifest(
        snapshot=snapshot,
        recipe="django",
        host="web1",
        started="2026-11-22T10:15:00Z",
        finished="2026-11-22T10:19:00Z",
        params=params or {"excludes": ["/tmp"], "postgres": {"password": SENTINEL}},
        objects=objects,
        facts={"note": SENTINEL},
    )


def _config(tmp_path: Path, key: signing.SigningKey | None, repo_dir: Path, extra: str = "") -> Any:
    signers = f'signers = ["{key.public.line}"]' if key else ""
    text = (
        f'[repository]\nurl = "{repo_dir}"\n{signers}\n'
        '[hosts.web1]\naddress = "203.0.113.5"\n'
        '[recipes.django]\nroot = "/srv/site"\npostgres = { host = "db", password_env = "PGPW" }\n' + extra
    )
    path = tmp_path / "recipes.toml"
    path.write_text(text)
    return config.load(str(path))


def test_snapshot_runbook_fills_in_the_verified_manifests_objects(tmp_path: Path) -> None:
    key = signing.generate_signing_key(tmp_path / "signing_key", "recipes@test")
    repo_dir = tmp_path / "repo"
    m = _manifest()
    _sign_into(repo_dir, key, m)
    cfg = _config(tmp_path, key, repo_dir)
    text = runbook.for_config(cfg, "django", "web1", snapshot="latest")
    for o in m.objects:
        assert o.path in text and o.sha256 in text and f"({o.size} bytes)" in text
    assert f"Snapshot `{m.snapshot}`" in text
    assert f"recipes restore django --host web1 --snapshot {m.snapshot}" in text
    # the break-glass blocks get the snapshot's real folder (from the manifest)
    assert f'"${{REPO:={repo_dir}}}"' in text and f'"$REPO/django/web1/{m.snapshot}"' in text
    # content parameters come from the snapshot, as restore takes them
    assert "`/tmp` (under /srv/site)" in text and "/var/lib/postgresql" not in text.split("## Prereq")[0]


def test_snapshot_runbook_refuses_an_untrusted_manifest_as_restore_does(tmp_path: Path) -> None:
    ours = signing.generate_signing_key(tmp_path / "ours", "recipes@test")
    theirs = signing.generate_signing_key(tmp_path / "theirs", "forger")
    repo_dir = tmp_path / "repo"
    _sign_into(repo_dir, theirs, _manifest())
    cfg = _config(tmp_path, ours, repo_dir)
    with pytest.raises(VerifyError, match="signature does not verify"):
        runbook.for_config(cfg, "django", "web1", snapshot="latest")
    (repo_dir / "django" / "web1" / "20261122T101500Z-cafe" / "manifest.sig").unlink()
    with pytest.raises(VerifyError, match="not signed"):
        runbook.for_config(cfg, "django", "web1", snapshot="20261122")


def test_snapshot_runbook_checks_the_whole_chain(tmp_path: Path) -> None:
    """An incremental whose parent is missing is refused as restore refuses it."""
    from recipes.errors import RepositoryError

    key = signing.generate_signing_key(tmp_path / "k", "recipes@test")
    repo_dir = tmp_path / "repo"
    import attrs

    _sign_into(repo_dir, key, attrs.evolve(_manifest(), level=1, parent="20261121T101500Z-dead"))
    cfg = _config(tmp_path, key, repo_dir)
    with pytest.raises(RepositoryError, match="20261121T101500Z-dead"):
        runbook.for_config(cfg, "django", "web1", snapshot="latest")


@pytest.mark.parametrize("name", apps.names())
@pytest.mark.parametrize("fmt", runbook.FORMATS)
def test_no_secret_value_reaches_any_runbook(
    name: str, fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for env in ENV_SECRETS:
        monkeypatch.setenv(env, SENTINEL)
    params, options = _params(name)
    r = apps.get(name)
    texts = [runbook.render(r, params, "web1", SETTINGS, fmt=fmt, options=options, drill=DRILL)]
    if name == "django":  # and with a snapshot whose manifest carries it (params, facts)
        key = signing.generate_signing_key(tmp_path / "k", "recipes@test")
        repo_dir = tmp_path / "repo"
        _sign_into(repo_dir, key, _manifest())
        cfg = _config(tmp_path, key, repo_dir)
        texts.append(runbook.for_config(cfg, name, "web1", snapshot="latest", fmt=fmt))
    for text in texts:
        assert SENTINEL not in text
        assert SENTINEL.lower() not in text.lower()


def test_html_escapes_every_text_and_fetches_nothing() -> None:
    evil = "<script>alert('x')</script> & <img src=x onerror=alert(1)>"
    doc = runbook.Document(
        f"T {evil}",
        (
            runbook.Para(f"p {evil} `{evil}`"),
            runbook.Code(evil, "sh"),
            runbook.Items((evil,), ordered=True),
            runbook.Table((evil,), ((evil,),)),
            runbook.Section(evil, (runbook.Para(evil),)),
        ),
    )
    out = runbook.html(doc)
    assert "<script" not in out and "<img" not in out
    assert out.count("&lt;script&gt;") >= 8
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", out)
    assert "@media print" in out
    md = runbook.markdown(doc)
    assert "```sh\n" + evil + "\n```" in md


def test_markdown_fences_outgrow_backticks_in_code() -> None:
    md = runbook.markdown(runbook.Document("t", (runbook.Code("echo ```x```", "sh"),)))
    assert "````sh\necho ```x```\n````" in md


def test_headless_chromium_prints_the_html_runbook_without_errors(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run ./scripts/install-test-deps"
    params, _options = _params("looker")
    page = tmp_path / "looker.html"
    page.write_text(runbook.render(apps.get("looker"), params, "web1", SETTINGS, fmt="html", drill=DRILL))
    pdf = tmp_path / "looker.pdf"
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--print-to-pdf={pdf}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 20_000
    # console messages and script errors appear as CONSOLE lines with --enable-logging=stderr
    problems = [
        line
        for line in done.stderr.splitlines()
        if ":CONSOLE" in line or re.search(r"Uncaught|ReferenceError|SyntaxError|net::ERR_", line)
    ]
    assert problems == []


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("RECIPES_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "recipes", "--config", str(tmp_path / "recipes.toml"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_cli_writes_markdown_and_html_runbooks(tmp_path: Path) -> None:
    _config(tmp_path, None, tmp_path / "repo")
    md = _cli(tmp_path, "runbook", "django", "--host", "h", "-o", "f.md")
    assert md.returncode == 0, md.stderr
    text = (tmp_path / "f.md").read_text()
    assert text.startswith("# Restore runbook: django on h\n")
    assert "recipes restore django --host h --snapshot latest" in text
    assert "```sh\n" in text and "## Break-glass restore" in text
    out = _cli(tmp_path, "runbook", "django", "--host", "h", "--format", "html", "-o", "f.html")
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "f.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>Restore runbook: django on h</title>" in page
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".f.")] == []  # no temp file left
    stdout = _cli(tmp_path, "runbook", "django", "--host", "h")
    assert stdout.returncode == 0 and stdout.stdout == text


def test_cli_errors_are_one_line_with_their_exit_codes(tmp_path: Path) -> None:
    _config(tmp_path, None, tmp_path / "repo")
    unknown = _cli(tmp_path, "runbook", "nope", "--host", "h")
    assert unknown.returncode == 2 and unknown.stderr.startswith("recipes: error: unknown recipe 'nope'")
    assert len(unknown.stderr.splitlines()) == 1
    missing = _cli(tmp_path, "runbook", "django", "--host", "h", "--snapshot", "latest")
    assert missing.returncode == 1 and "no snapshot of django@h" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1
    nowhere = _cli(tmp_path, "runbook", "django", "--host", "h", "-o", str(tmp_path / "no" / "f.md"))
    assert nowhere.returncode == 1 and "cannot write the runbook" in nowhere.stderr  # like schedule -o
    assert [line for line in nowhere.stderr.splitlines() if "recipes: error" in line] == [
        nowhere.stderr.splitlines()[-1]
    ]
    assert "Traceback" not in nowhere.stderr
    badfmt = _cli(tmp_path, "runbook", "django", "--host", "h", "--format", "pdf")
    assert badfmt.returncode == 2 and len(badfmt.stderr.splitlines()) == 1


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "rb.md"
    target.write_text("old")
    runbook.write_atomic(str(target), "new")
    assert target.read_text() == "new"
    with pytest.raises(StepFailed):
        runbook.write_atomic(str(tmp_path / "missing" / "rb.md"), "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rb.md"]


def test_docs_runbooks_are_current() -> None:
    """What `docgen --check` checks in CI: the sample runbooks are the example config's."""
    from recipes import docgen

    root = Path(__file__).resolve().parents[2]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for name in apps.names():
            assert (root / "docs" / "runbooks" / f"{name}.md").read_text() == docgen.runbook(name), name
        assert docgen.main(["--check"]) == 0
    finally:
        os.chdir(cwd)


def test_cli_set_picks_the_restore_mode_the_runbook_describes(tmp_path: Path) -> None:
    """--set works as for restore: DSS mode=elsewhere is the installer.sh -u procedure."""
    _config(tmp_path, None, tmp_path / "repo")
    pristine = _cli(tmp_path, "runbook", "dss", "--host", "h")
    elsewhere = _cli(
        tmp_path, "runbook", "dss", "--host", "h", "--set", "mode=elsewhere", "--set", "install_dir=/opt/dss"
    )
    assert pristine.returncode == 0 and elsewhere.returncode == 0, elsewhere.stderr
    assert "installer.sh" in elsewhere.stdout and "installer.sh" not in pristine.stdout
    bad = _cli(tmp_path, "runbook", "dss", "--host", "h", "--set", "mode=nope")
    assert bad.returncode == 2 and "mode: must be one of pristine, elsewhere" in bad.stderr
