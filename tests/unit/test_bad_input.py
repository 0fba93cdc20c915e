"""A corpus of bad input: every case is one ``recipes: error:`` line and its documented exit code.

The real CLI runs in-process (click's CliRunner) with HOME, XDG_CACHE_HOME and the working
directory in a tmp dir, so neither the checkout's recipes.toml nor the user's keys are read.
Config, flags, ``--set``, host specs, repository URLs, identity files and manifests.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyrage
import pytest
from click.testing import CliRunner, Result

from recipes import cli, config, hosts
from recipes import manifest as mf
from recipes.errors import ConfigError

GOOD_RECIPIENT = str(pyrage.x25519.Identity.generate().to_public())


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME and cwd: no real config, identity or cache is ever read."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("RECIPES_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args))


def one_error(result: Result, code: int) -> str:
    """Assert the documented exit code and exactly one ``recipes: error:`` line; return it."""
    assert "Traceback" not in result.output + result.stderr
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("recipes: error: "), lines[0]
    assert result.exit_code == code, (result.exit_code, lines[0])
    return lines[0]


def write_config(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "bad.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# (case id, recipes.toml text, a key or word the one line must name)
CONFIGS: list[tuple[str, str | bytes, str]] = [
    ("toml-unclosed-table", "[repository\n", "not valid TOML"),
    ("toml-missing-value", "a =\n", "not valid TOML"),
    ("toml-duplicate-key", '[repository]\nurl = "a"\nurl = "b"\n', "not valid TOML"),
    ("toml-nul-byte", b"[repository]\nurl = '\x00'\n", "not valid TOML"),
    ("not-utf8", b"[repository]\nurl = '\xff\xfe'\n", "not UTF-8"),
    ("unknown-section", "[repositry]\nurl = 'x'\n", "unknown keys (repositry)"),
    ("top-level-path", 'path = "/etc"\n', "unknown keys (path)"),
    ("repo-unknown-key", "[repository]\nurll = 'x'\n", "unknown keys (urll)"),
    ("repo-url-int", "[repository]\nurl = 5\n", "repository.url"),
    ("repo-url-empty", "[repository]\nurl = ''\n", "repository.url"),
    ("repo-recipients-ints", "[repository]\nrecipients = [1]\n", "repository.recipients"),
    ("repo-options-string", "[repository]\noptions = 'x'\n", "repository.options"),
    ("repo-compression-mode", "[repository]\ncompression = 'fast'\n", "repository.compression"),
    ("repo-level-zero", "[repository]\ncompression_level = 0\n", "repository.compression_level"),
    ("repo-level-high", "[repository]\ncompression_level = 99\n", "repository.compression_level"),
    ("repo-level-string", "[repository]\ncompression_level = '3'\n", "repository.compression_level"),
    ("repo-level-float", "[repository]\ncompression_level = 1.5\n", "repository.compression_level"),
    ("repo-identity-empty", "[repository]\nidentity_file = ''\n", "repository.identity_file"),
    ("repo-identity-int", "[repository]\nidentity_file = 5\n", "repository.identity_file"),
    ("repo-not-a-table", "repository = 'x'\n", "repository"),
    ("duration-words", "[retention]\nfull_every = '3 months'\n", "retention.full_every"),
    ("duration-int", "[retention]\nfull_every = 3\n", "retention.full_every"),
    ("duration-empty", "[retention]\nfull_every = ''\n", "retention.full_every"),
    ("duration-unit", "[retention]\nmax_age = '2X'\n", "retention.max_age"),
    ("duration-overflow", "[retention]\nfull_every = '99999999999999Y'\n", "retention.full_every"),
    ("duration-past-dates", "[retention]\nmax_age = '9999Y'\n", "longer than 1000 years"),
    ("keep-negative", "[retention]\nkeep_daily = -1\n", "retention.keep_daily"),
    ("keep-string", "[retention]\nkeep_daily = '7'\n", "retention.keep_daily"),
    ("retention-unknown", "[retention]\nkeep_forever = true\n", "unknown keys (keep_forever)"),
    ("host-sudo-string", "[hosts.web1]\nsudo = 'false'\n", "hosts.web1.sudo"),
    ("host-sudo-int", "[hosts.web1]\nsudo = 0\n", "hosts.web1.sudo"),
    ("host-port-string", "[hosts.web1]\nport = '22'\n", "hosts.web1.port"),
    ("host-port-high", "[hosts.web1]\nport = 99999\n", "hosts.web1.port"),
    ("host-port-zero", "[hosts.web1]\nport = 0\n", "hosts.web1.port"),
    ("host-port-negative", "[hosts.web1]\nport = -1\n", "hosts.web1.port"),
    ("host-port-float", "[hosts.web1]\nport = 22.0\n", "hosts.web1.port"),
    ("host-address-empty", "[hosts.web1]\naddress = ''\n", "hosts.web1.address"),
    ("host-address-space", "[hosts.web1]\naddress = 'a b'\n", "hosts.web1.address"),
    ("host-user-option", "[hosts.web1]\nuser = '-oProxyCommand=x'\n", "hosts.web1.user"),
    ("host-unknown-key", "[hosts.web1]\nadress = 'x'\n", "unknown keys (adress)"),
    ("host-not-a-table", "[hosts]\nweb1 = 'x'\n", "hosts.web1"),
    ("hosts-a-list", "hosts = [1]\n", "hosts"),
    ("host-compression", "[hosts.web1]\ncompression = 'zip'\n", "hosts.web1.compression"),
    ("host-name-space", '[hosts."web 1"]\naddress = "x"\n', "web 1"),
    ("recipe-unknown", "[recipes.nosuch]\nroot = '/'\n", "recipes.nosuch"),
    ("recipe-not-a-table", "[recipes]\ndjango = 5\n", "recipes.django"),
    ("recipes-not-tables", "recipes = 5\n", "recipes"),
    ("recipe-root-relative", "[recipes.django]\nroot = 'srv'\n", "root"),
    ("recipe-root-int", "[recipes.django]\nroot = 5\n", "root"),
    ("recipe-root-dotdot", "[recipes.django]\nroot = '/srv/../etc'\n", "root"),
    ("recipe-bool-string", "[recipes.django]\nexclude_system = 'false'\n", "exclude_system"),
    ("recipe-pg-string", "[recipes.django]\npostgres = 'yes'\n", "postgres"),
    ("recipe-pg-port-string", "[recipes.django]\npostgres = { port = '5432' }\n", "postgres.port"),
    ("recipe-pg-port-high", "[recipes.django]\npostgres = { port = 70000 }\n", "postgres.port"),
    ("recipe-pg-env", "[recipes.django]\npostgres = { password_env = 'pass word' }\n", "password_env"),
    ("recipe-pg-unknown", "[recipes.django]\npostgres = { passwd = 'x' }\n", "unknown keys (passwd)"),
    ("recipe-sqlite-ints", "[recipes.django]\nsqlite = [1]\n", "sqlite"),
    ("recipe-sqlite-relative", "[recipes.django]\nsqlite = ['site.db']\n", "sqlite"),
    ("recipe-unknown-key", "[recipes.django]\nrot = '/'\n", "unknown keys (rot)"),
    ("recipe-mysql-user-int", "[recipes.django]\nmysql = { user = 5 }\n", "mysql.user"),
    ("recipe-excludes-table", "[recipes.django]\nexcludes = { a = 1 }\n", "excludes"),
]


@pytest.mark.parametrize(("text", "names"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config_file(tmp_path: Path, text: str | bytes, names: str) -> None:
    path = write_config(tmp_path, text)
    line = one_error(run("--config", str(path), "plan", "django", "--host", "local"), 2)
    assert "bad.toml" in line and names in line


def test_strict_types_reach_the_config_unchanged() -> None:
    """The cases above fail; their right spellings pass with the right values (not coerced)."""
    cfg = config.parse({"hosts": {"web1": {"sudo": False, "port": 22}}}, "x.toml")
    assert cfg.hosts["web1"].sudo is False and cfg.hosts["web1"].port == 22
    with pytest.raises(ConfigError, match=r"x.toml: hosts.web1.sudo: expected true or false, got 'false'"):
        config.parse({"hosts": {"web1": {"sudo": "false"}}}, "x.toml")


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p / "missing.toml", "does not exist"),
        (lambda p: p, "is a directory"),
        (lambda p: Path("/proc/self/mem"), "cannot read"),  # readable by name, EIO on read
    ],
    ids=["missing", "directory", "unreadable"],
)
def test_config_file_that_cannot_be_read(tmp_path: Path, make: Callable[[Path], Path], words: str) -> None:
    line = one_error(run("--config", str(make(tmp_path)), "plan", "django", "--host", "local"), 2)
    assert words in line


def test_recipes_config_env_to_a_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECIPES_CONFIG", str(tmp_path / "nope.toml"))
    assert "RECIPES_CONFIG" in one_error(run("plan", "django", "--host", "local"), 2)


@pytest.mark.parametrize("value", ["", "  "])
@pytest.mark.parametrize("command", [("plan", "django", "--host", "local"), ("init",)], ids=["plan", "init"])
def test_recipes_config_set_but_empty_is_refused_not_the_default(
    monkeypatch: pytest.MonkeyPatch, home: Path, value: str, command: tuple[str, ...]
) -> None:
    """An empty ``RECIPES_CONFIG`` (a typo'd export) once silently meant the default config: a
    backup ran against another repository, or init wrote the user's config."""
    conf = home / ".config" / "recipes"
    conf.mkdir(parents=True)
    (conf / "recipes.toml").write_text("[repository]\nurl = 'elsewhere'\n")
    monkeypatch.setenv("RECIPES_CONFIG", value)
    line = one_error(run(*command), 2)
    assert line == "recipes: error: RECIPES_CONFIG is set but empty: unset it or name a file"
    assert sorted(p.name for p in conf.iterdir()) == ["recipes.toml"]  # init wrote nothing


def test_empty_config_option() -> None:
    assert "--config" in one_error(run("--config", "", "plan", "django", "--host", "local"), 2)


FLAGS = [
    ("unknown-option", ["plan", "django", "--host", "local", "--bogus"], "--bogus"),
    ("unknown-global-option", ["--bogus", "list"], "--bogus"),
    ("unknown-command", ["bakup"], "bakup"),
    ("missing-recipe", ["plan"], "RECIPE"),
    ("missing-host", ["plan", "django"], "--host"),
    ("missing-option-value", ["restore", "django", "--host", "local", "--snapshot"], "--snapshot"),
    ("flag-with-value", ["run", "django", "--host", "local", "--full=3"], "--full"),
    ("unknown-recipe-plan", ["plan", "nosuch", "--host", "local"], "known recipes"),
    ("unknown-recipe-show", ["show", "nosuch"], "known recipes"),
    ("unknown-recipe-snapshots", ["snapshots", "nosuch"], "known recipes are django"),
    ("extra-argument", ["list", "extra"], "extra"),
]


@pytest.mark.parametrize(("args", "words"), [f[1:] for f in FLAGS], ids=[f[0] for f in FLAGS])
def test_bad_command_line(args: list[str], words: str) -> None:
    assert words in one_error(run(*args), 2)


SETS = [
    ("set-empty-key", "=x", "expected key=value"),
    ("set-no-equals", "root", "expected key=value"),
    ("set-double-dot", "a..b=1", "is not a key"),
    ("set-leading-dot", ".a=1", "is not a key"),
    ("set-trailing-dot", "a.=1", "is not a key"),
    ("set-space-in-key", "a b=1", "is not a key"),
    ("set-unknown-key", "nope=1", "unknown keys (nope)"),
    ("set-unknown-nested", "postgres.nope=1", "unknown keys (nope)"),
    ("set-bool-word", "exclude_system=yes", "exclude_system: expected true or false"),
    ("set-list-for-string", "root=[1]", "root: expected a string"),
    ("set-root-relative", "root=relative", "root: must be an absolute path"),
    ("set-root-empty", "root=", "root: must be an absolute path"),
    ("set-int-for-list", "sqlite=5", "sqlite: expected a list of strings"),
    ("set-port-word", "postgres.port=5433x", "postgres.port: expected an integer"),
    ("set-port-zero", "postgres.port=0", "postgres.port: must be a port number"),
    ("set-date-for-string", "root=2024-01-01", "root: expected a string"),
    ("set-table-for-list", "excludes.x=1", "excludes"),
    ("set-two-values", 'root="/a"\nother=1', "root: must be an absolute path"),
]


@pytest.mark.parametrize(("item", "words"), [s[1:] for s in SETS], ids=[s[0] for s in SETS])
def test_bad_set(item: str, words: str) -> None:
    assert words in one_error(run("plan", "django", "--host", "local", "--set", item), 2)


@pytest.mark.parametrize(
    "command",
    [
        ["plan", "django", "--host", "local"],
        ["run", "django", "--host", "local"],
        ["restore", "django", "--host", "local"],
        ["restore", "django", "--host", "local", "--plan"],
    ],
    ids=["plan", "run", "restore", "restore-plan"],
)
def test_relative_root_is_refused_by_every_command(command: list[str]) -> None:
    assert "root: must be an absolute path" in one_error(run(*command, "--set", "root=srv/site"), 2)


HOSTS = [
    ("host-empty", ""),
    ("host-only-at-port", "@:22"),
    ("host-no-address", "user@"),
    ("host-two-colons", "a:b:c"),
    ("host-space", "web 1"),
    ("host-tab", "\tweb1"),
    ("host-only-port", ":22"),
    ("host-empty-port", "web1:"),
    ("host-port-high", "web1:99999"),
    ("host-port-zero", "web1:0"),
    ("host-port-word", "web1:ssh"),
    ("host-port-unicode-digits", "web1:\uff12\uff12"),
    ("host-two-ats", "a@b@c"),
    ("host-option", "-oProxyCommand=touch x"),
    ("host-option-no-space", "-oProxyCommand=x"),
    ("host-unclosed-bracket", "[::1:22"),
    ("host-bracket-not-v6", "[web1]:22"),
]


@pytest.mark.parametrize("spec", [h[1] for h in HOSTS], ids=[h[0] for h in HOSTS])
def test_bad_host_spec(spec: str) -> None:
    assert "--host" in one_error(run("plan", "django", "--host", spec), 2)


@pytest.mark.parametrize("spec", ["local", "web1", "root@web1:2222", "::1", "[::1]:2222", "u@[fe80::1]:22"])
def test_good_host_specs_still_parse(spec: str) -> None:
    assert hosts.parse_target(spec).name == spec


def test_bad_host_in_snapshots_and_from() -> None:
    one_error(run("snapshots", "--host", "@:22"), 2)
    one_error(run("restore", "django", "--host", "local", "--from", "user@"), 2)
    for empty in ("", "  "):  # a script's empty variable: not "the target host itself"
        assert "restore --from: an empty host name" in one_error(
            run("restore", "django", "--host", "local", "--from", empty), 2
        )


@pytest.mark.parametrize(
    "args",
    [
        ["run", "django", "--host", "local", "--repo", "foo://x"],
        ["run", "django", "--host", "local", "--repo", ""],
        ["snapshots", "--repo", "foo://x"],
        ["snapshots", "--repo", " "],
        ["restore", "django", "--host", "local", "--repo", "foo://x"],
    ],
    ids=["run-unknown-protocol", "run-empty", "snapshots-unknown-protocol", "snapshots-blank", "restore"],
)
def test_bad_repository_url(args: list[str]) -> None:
    assert "repo" in one_error(run(*args), 2)


def test_bad_repository_url_in_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[repository]\nurl = 'foo://x'\n")
    assert "foo://x" in one_error(run("--config", str(path), "snapshots"), 2)


SECRET = str(pyrage.x25519.Identity.generate())
IDENTITIES: list[tuple[str, bytes | None, str]] = [
    ("missing", None, "file does not exist"),
    ("empty", b"", "holds no age secret key"),
    ("comments-only", b"# created: today\n# public key: age1xyz\n", "holds no age secret key"),
    ("binary", bytes(range(256)) * 4, "not a text file"),
    ("public-key", GOOD_RECIPIENT.encode() + b"\n", "is an age public key"),
    ("damaged-secret", SECRET[:-3].encode() + b"\n", "line 1 is not a valid age secret key"),
    ("prose", b"hello\n", "line 1 is not an age secret key"),
    ("ssh-private-key", b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "is not an age secret key"),
    ("age-encrypted", b"age-encryption.org/v1\n-> scrypt x\n", "age-encrypted"),
    ("huge", b"# x\n" * 40000, "too large"),
]


@pytest.mark.parametrize(("content", "words"), [i[1:] for i in IDENTITIES], ids=[i[0] for i in IDENTITIES])
def test_bad_identity_file(tmp_path: Path, content: bytes | None, words: str) -> None:
    path = tmp_path / "identity.txt"
    if content is not None:
        path.write_bytes(content)
    line = one_error(run("restore", "django", "--host", "local", "--identity", str(path)), 2)
    assert str(path) in line and words in line
    assert SECRET[15:] not in line  # a damaged key is named by its line, never quoted


@pytest.mark.parametrize("command", [("restore", "django", "--host", "local"), ("verify", "--all", "--deep")])
def test_a_missing_identity_file_in_the_config_names_its_key_and_file(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Not just "identity file /x/y: cannot read": which setting named it, in which file."""
    path = write_config(tmp_path, "[repository]\nidentity_file = 'keys/age.txt'\n")
    line = one_error(run("--config", str(path), *command), 2)
    assert line == (
        f"recipes: error: [repository] identity_file = keys/age.txt (in {path}): file does not exist "
        f"({tmp_path / 'keys' / 'age.txt'}): fix the path there, or pass --identity FILE"
    )


def test_identity_file_that_is_a_directory(tmp_path: Path) -> None:
    line = one_error(run("restore", "django", "--host", "local", "--identity", str(tmp_path)), 2)
    assert "is a directory" in line


def test_a_good_identity_with_comments_loads(tmp_path: Path) -> None:
    from recipes import stream

    path = tmp_path / "identity.txt"
    path.write_text(f"# created: now\n# public key: {GOOD_RECIPIENT}\n\n{SECRET}\n")
    assert len(stream.load_identities(str(path))) == 1


# Manifests: each one is a ValueError from manifest.loads (the repository skips such a snapshot).
GOOD_MANIFEST = mf.Manifest(
    snapshot="20261122T101500Z-abcdef",
    recipe="django",
    host="local",
    started="2026-11-22T10:15:00Z",
    finished="2026-11-22T10:16:00Z",
    params={"root": "/"},
    objects=(mf.StoredObject("files.tar", "files", "files.tar.zst.age", 10, "ab" * 32),),
)
GOOD = json.loads(mf.dumps(GOOD_MANIFEST))


def changed(**kw: Any) -> str:
    return json.dumps({**GOOD, **kw})


def without(key: str) -> str:
    return json.dumps({k: v for k, v in GOOD.items() if k != key})


def object_with(**kw: Any) -> str:
    return json.dumps({**GOOD, "objects": [{**GOOD["objects"][0], **kw}]})


MANIFESTS = [
    ("empty", ""),
    ("truncated", mf.dumps(GOOD_MANIFEST)[:40]),
    ("not-json", "manifest"),
    ("json-list", "[]"),
    ("json-null", "null"),
    ("json-number", "1"),
    ("json-string", '"x"'),
    ("empty-object", "{}"),
    ("missing-snapshot", without("snapshot")),
    ("missing-objects", without("objects")),
    ("snapshot-int", changed(snapshot=5)),
    ("level-bool", changed(level=True)),
    ("level-string", changed(level="1")),
    ("objects-not-list", changed(objects="files.tar")),
    ("objects-of-ints", changed(objects=[1])),
    ("params-list", changed(params=[])),
    ("size-string", object_with(size="10")),
    ("size-float", object_with(size=10.5)),
    ("object-missing-sha", json.dumps({**GOOD, "objects": [{"name": "files.tar"}]})),
    ("deep-nesting", "[" * 100000 + "]" * 100000),
]


@pytest.mark.parametrize("text", [m[1] for m in MANIFESTS], ids=[m[0] for m in MANIFESTS])
def test_bad_manifest_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="malformed manifest") as info:
        mf.loads(text)
    assert "\n" not in str(info.value)


def test_good_manifest_still_loads() -> None:
    assert mf.loads(mf.dumps(GOOD_MANIFEST)) == GOOD_MANIFEST


def test_snapshots_skips_a_damaged_manifest_and_lists_the_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "repo"
    good = repo / "django" / "local" / GOOD_MANIFEST.snapshot
    bad = repo / "django" / "local" / "20261123T101500Z-0badbad"
    nonutf8 = repo / "django" / "local" / "20261124T101500Z-0badbad"
    for d in (good, bad, nonutf8):
        d.mkdir(parents=True)
    (good / "manifest.json").write_text(mf.dumps(GOOD_MANIFEST))
    (bad / "manifest.json").write_text('{"snapshot": ')
    (nonutf8 / "manifest.json").write_bytes(b"\xff\xfe{}")
    with caplog.at_level(logging.WARNING, logger="recipes"):
        result = run("snapshots", "--repo", str(repo))
    assert result.exit_code == 0, result.stderr
    lines = result.output.splitlines()
    assert lines[0].startswith(GOOD_MANIFEST.snapshot)
    assert any(line.startswith("20261123T101500Z-0badbad  DAMAGED: ") for line in lines)
    assert any(line.startswith("20261124T101500Z-0badbad  DAMAGED: ") for line in lines)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("skipping damaged snapshot" in w for w in warnings)
    as_json = json.loads(run("--json", "snapshots", "--repo", str(repo)).output)
    assert [d["snapshot"] for d in as_json if "damaged" not in d] == [GOOD_MANIFEST.snapshot]
    assert len([d for d in as_json if "damaged" in d]) == 2
    # a restore of "latest" refuses the damaged newest one (never an older one in its place);
    # the good one is still found by its id
    from recipes.repository import DamagedSnapshot, Repository

    with pytest.raises(DamagedSnapshot, match="latest snapshot of django@local is damaged"):
        Repository(str(repo)).find("django", "local")
    assert Repository(str(repo)).find("django", "local", GOOD_MANIFEST.snapshot) == GOOD_MANIFEST


def test_deep_merge_keeps_the_config_table(tmp_path: Path) -> None:
    """``--set postgres.port=5433`` changes one key; host, user and password_env stay."""
    path = write_config(
        tmp_path,
        "[recipes.django]\npostgres = { host = '10.0.0.5', user = 'backup', password_env = 'PG_PW' }\n",
    )
    cfg = config.load(str(path))
    values = config.recipe_values(cfg, "django", ["postgres.port=5433"])
    assert values["postgres"] == {"host": "10.0.0.5", "user": "backup", "password_env": "PG_PW", "port": 5433}
    result = run(
        "--config", str(path), "--json", "plan", "django", "--host", "local", "--set", "postgres.port=5433"
    )
    assert result.exit_code == 0, result.stderr
    plan = json.dumps(json.loads(result.output))
    assert "10.0.0.5" in plan and "5433" in plan and "PG_PW" in plan and "backup" in plan
    # and a table still replaces `postgres = true`
    values = config.recipe_values(
        config.parse({"recipes": {"django": {"postgres": True}}}, "x"), "django", ["postgres.port=5433"]
    )
    assert values["postgres"] == {"port": 5433}


def test_the_config_in_use_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="recipes"):
        assert run("plan", "django", "--host", "local").exit_code == 0
    assert "no config file: defaults" in [r.getMessage() for r in caplog.records]
    caplog.clear()
    path = write_config(tmp_path, "[recipes.django]\nroot = '/srv'\n")
    with caplog.at_level(logging.INFO, logger="recipes"):
        assert run("--config", str(path), "plan", "django", "--host", "local").exit_code == 0
    assert f"config {path.resolve()}" in [r.getMessage() for r in caplog.records]


# What a failed command's one line says: the cause, not tar's closing words.
TAR_MISSING = (
    "tar: /srv/site: Cannot open: No such file or directory\ntar: Error is not recoverable: exiting now\n"
)


def test_last_line_names_the_cause_of_a_tar_failure() -> None:
    assert hosts.last_line(TAR_MISSING).startswith("tar: /srv/site: Cannot open: No such file or directory")
    stat = (
        "tar: ./x: Cannot stat: No such file or directory\n"
        "tar: Exiting with failure status due to previous errors\n"
    )
    assert hosts.last_line(stat) == "tar: ./x: Cannot stat: No such file or directory"


def test_last_line_prefers_the_first_error_over_its_consequences() -> None:
    text = (
        "psql:<stdin>:12: WARNING: something harmless\n"
        'psql:<stdin>:40: ERROR:  relation "t" already exists\n'
        'psql:<stdin>:52: ERROR:  syntax error at or near "1"\n'
    )
    assert hosts.last_line(text).startswith('psql:<stdin>:40: ERROR:  relation "t" already exists')
    assert hosts.last_line("one line\nthe last\n").startswith("the last")


def test_stderr_keeps_its_first_error_past_the_tail() -> None:
    """A root cause followed by megabytes of follow-up errors is still what the line names."""
    tail = hosts._Tail()
    tail.add(b"ERROR: the root cause\n")
    for _ in range(2000):
        tail.add(b"ERROR: a consequence of it, one of many\n" * 10)
    text = tail.text()
    assert text.startswith("ERROR: the root cause\n")
    assert "bytes of stderr skipped" in text
    assert len(text.encode()) < hosts.STDERR_HEAD + hosts.STDERR_TAIL + 100
    assert hosts.last_line(text).startswith("ERROR: the root cause")


def test_a_multi_line_error_message_is_printed_as_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise ConfigError("first\nsecond")

    monkeypatch.setattr(config, "recipe_values", boom)
    assert one_error(run("plan", "django", "--host", "local"), 2) == "recipes: error: first second"


def test_the_corpus_is_big_enough() -> None:
    count = len(CONFIGS) + len(FLAGS) + len(SETS) + len(HOSTS) + len(IDENTITIES) + len(MANIFESTS) + 5 + 3
    assert count >= 60
    assert os.environ["HOME"] != os.path.expanduser("~root")
