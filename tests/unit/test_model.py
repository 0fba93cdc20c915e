"""Commands, secrets and parameters: what is shown, what goes on the wire, what is refused."""

from __future__ import annotations

import pytest

from recipes import apps, config
from recipes.errors import ConfigError
from recipes.model import Command, Secret
from recipes.recipe import make_params
from recipes.steps import Load, tar_excludes, under

SENTINEL = "s3cr3t-SENTINEL-value"


def test_secret_is_masked_in_display_and_sent_on_stdin_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW", SENTINEL)
    cmd = Command("pg_dumpall --host=db", secrets=(("PGPASSWORD", Secret("PW")),), user="postgres")
    assert SENTINEL not in cmd.masked()
    assert "PGPASSWORD=*** pg_dumpall" in cmd.masked()
    line, stdin = cmd.wire(sudo=True)
    assert SENTINEL not in line
    assert stdin == SENTINEL.encode() + b"\n"
    assert line.startswith("sudo -n -- sudo -n -u postgres -- bash -c ")
    assert "IFS= read -r PGPASSWORD && " in line and "export" not in line


def test_a_secret_reaches_only_the_program_it_is_scoped_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not exported: zstd and every other process of the pipeline run without it in their
    environment (/proc/PID/environ), only the client named with ``NAME="$NAME"`` gets it."""
    from recipes.compression import Compression
    from recipes.hosts import LocalHost, run

    monkeypatch.setenv("PW", SENTINEL)
    cmd = Command(
        'PGPASSWORD="$PGPASSWORD" printenv PGPASSWORD; printenv PGPASSWORD || echo not-in-env',
        secrets=(("PGPASSWORD", Secret("PW")),),
    )
    assert cmd.masked().startswith("PGPASSWORD=*** printenv")
    line, stdin = Compression().on_host(cmd).wire()
    out = run(LocalHost(), Command(f"{line} | zstd -d"), stdin=stdin).stdout.decode().split()
    assert out == [SENTINEL, "not-in-env"]


def test_missing_secret_env_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_PW", raising=False)
    with pytest.raises(ConfigError, match="NOPE_PW is not set"):
        Command("x", secrets=(("P", Secret("NOPE_PW")),)).wire()


def test_excludes_are_anchored_to_the_root() -> None:
    assert tar_excludes(("/tmp", "var/cache/", "/")) == [
        "--anchored",
        "--exclude=./tmp",
        "--exclude=./var/cache",
    ]
    assert under("/srv/x", "/var/opt/p/p.db") == "/srv/x/var/opt/p/p.db"
    assert under("/", "/var/opt/p/p.db") == "/var/opt/p/p.db"


def test_set_parses_toml_values_and_dotted_keys() -> None:
    got = config.parse_set(["include_logs=true", 'sqlite=["/a.db"]', "postgres.port=5433", "root=/srv/x"])
    assert got == {"include_logs": True, "sqlite": ["/a.db"], "postgres": {"port": 5433}, "root": "/srv/x"}
    with pytest.raises(ConfigError, match="expected key=value"):
        config.parse_set(["novalue"])


def test_set_table_replaces_a_boolean() -> None:
    cfg = config.parse({"recipes": {"django": {"postgres": True}}}, "recipes.toml")
    values = config.recipe_values(cfg, "django", ["postgres.port=5433"])
    params = make_params(apps.get("django"), values, "x")
    assert params.postgres.port == 5433


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"root": 3}, "root: expected a string"),
        ({"postgres": {"port": "x"}}, "postgres.port: expected an integer"),
        ({"nope": 1}, "unknown keys (nope)"),
        ({"postgres": "yes"}, "postgres: expected true, false or a table"),
    ],
)
def test_bad_parameters_are_one_line_naming_the_key(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_params(apps.get("django"), values, "recipes.toml [recipes.django]")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("recipes.toml [recipes.django]: ")
    assert message in text


def test_config_errors_name_file_and_key(tmp_path: object) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse({"hosts": {"web1": {"port": "22x"}}}, "/etc/recipes.toml")
    assert "/etc/recipes.toml" in str(info.value) and "hosts.web1.port" in str(info.value)
    with pytest.raises(ConfigError, match="unknown keys"):
        config.parse({"repository": {"urll": "x"}}, "f.toml")


def test_config_file_not_toml(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "recipes.toml"
    p.write_text("[repository\nurl=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(str(p))


def test_host_resolution() -> None:
    cfg = config.parse(
        {"hosts": {"web1": {"address": "203.0.113.5", "user": "root", "port": 2222, "sudo": True}}},
        "/etc/recipes/recipes.toml",
    )
    web1 = cfg.host("web1")
    assert (web1.address, web1.user, web1.port, web1.sudo) == ("203.0.113.5", "root", 2222, True)
    assert cfg.host("local").is_local
    other = cfg.host("deploy@10.0.0.9:2200")
    assert (other.address, other.user, other.port) == ("10.0.0.9", "deploy", 2200)
    assert cfg.host("bastion-alias").address == "bastion-alias"


def test_load_step_separates_benign_from_real_errors() -> None:
    step = Load(
        name="postgresql",
        engine="postgresql",
        command=Command("psql"),
        error_pattern=r"(^|: )(ERROR|FATAL):",
        benign=(r'role "[^"]+" already exists',),
    )
    stderr = (
        'psql:<stdin>:14: ERROR:  role "postgres" already exists\n'
        'psql:<stdin>:99: ERROR:  relation "t" already exists\n'
    )
    assert step.errors(stderr) == ['psql:<stdin>:99: ERROR:  relation "t" already exists']
