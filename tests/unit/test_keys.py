"""``recipes init``: new keys and config; on an existing config, only what is missing is added."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pyrage
import pytest
from click.testing import CliRunner

from recipes import cli, config, keys, signing
from recipes.errors import ConfigError

# What `recipes init` wrote before signed snapshots: the config an older demo left behind.
OLD_STARTER = """\
# recipes.toml written by `recipes init`. Every key is explained in the project's recipes.toml.
[repository]
url = "{url}"
recipients = ["{recipient}"]
# The SECRET key: needed only where restores run. Keep a copy offline.
identity_file = "{identity}"

[retention]
full_every = "3M"
max_age = "2Y"
max_fulls_with_incrs = 2

# [hosts.web1]
# address = "203.0.113.5"
# user = "root"
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("RECIPES_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


def conf_dir(home: Path) -> Path:
    return home / ".config" / "recipes"


def old_demo(home: Path) -> tuple[Path, bytes]:
    """The files an older `recipes init` left: a config without signing keys and an age identity."""
    d = conf_dir(home)
    d.mkdir(parents=True)
    key = pyrage.x25519.Identity.generate()
    identity = d / "identity.txt"
    identity.write_text(f"# public key: {key.to_public()}\n{key}\n")
    os.chmod(identity, 0o600)
    cfg = d / "recipes.toml"
    cfg.write_text(OLD_STARTER.format(url=home / "repo", recipient=key.to_public(), identity=identity))
    return cfg, identity.read_bytes()


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def assert_usable(cfg_path: Path) -> signing.SigningKey:
    """The config loads, its signing key loads, and that key is a trusted signer."""
    cfg = config.load(str(cfg_path))
    path = cfg.signing_key_path()
    assert path is not None
    key = signing.load_signing_key(path)
    sig = key.sign(b"manifest", signing.MANIFEST_NAMESPACE)
    assert signing.verify(b"manifest", sig, cfg.signers(), signing.MANIFEST_NAMESPACE) == key.public
    return key


def test_fresh_init_writes_identity_signing_key_and_config(home: Path) -> None:
    result = keys.init(None, None, False)
    d = conf_dir(home)
    assert result["config"] == str(d / "recipes.toml")
    for name, mode in (("identity.txt", 0o600), ("signing_key", 0o600), ("signing_key.pub", 0o644)):
        assert (d / name).stat().st_mode & 0o777 == mode, name
    cfg = config.load(str(d / "recipes.toml"))
    assert cfg.repository.signing_key == str(d / "signing_key")
    assert cfg.repository.recipients == (result["recipient"],)
    key = assert_usable(d / "recipes.toml")
    assert cfg.repository.signers == ((d / "signing_key.pub").read_text().strip(),)
    assert key.public.comment.startswith("recipes@")
    assert subprocess.run(["ssh-keygen", "-y", "-f", str(d / "signing_key")], check=False).returncode == 0
    message = keys.init_message(result)
    assert "SECRET KEY" in message and key.public.fingerprint in message


def test_init_on_an_old_demo_config_adds_only_the_signing_key(home: Path) -> None:
    cfg, identity = old_demo(home)
    before = cfg.read_text()
    result = keys.init(None, None, False)
    d = conf_dir(home)
    assert (d / "identity.txt").read_bytes() == identity
    assert (d / "signing_key").stat().st_mode & 0o777 == 0o600
    after = cfg.read_text()
    # the two keys (and one comment) right after the header; every other line as it was
    lines = after.splitlines()
    at = lines.index("[repository]")
    assert lines[at + 1] == keys.ADDED_COMMENT
    assert lines[at + 2] == f'signing_key = "{d / "signing_key"}"'
    assert lines[at + 3].startswith('signers = ["ssh-ed25519 AAAA')
    assert lines[: at + 1] + lines[at + 4 :] == before.splitlines()
    key = assert_usable(cfg)
    assert result["created"] == [
        f"signing key {d / 'signing_key'} (+ .pub)",
        f"signing_key, signers in [repository] of {cfg}",
    ]
    message = keys.init_message(result)
    assert "added only what was missing" in message and "SECRET KEY" not in message
    assert key.public.fingerprint in message
    # a second run finds everything in place: nothing changes
    files = snapshot(d)
    again = keys.init(None, None, False)
    assert snapshot(d) == files
    assert again["created"] == [] and "nothing added" in keys.init_message(again)


def test_demo_scenario_through_the_cli(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/demo runs `recipes init` on every run, with RECIPES_CONFIG set to the user's config."""
    cfg, identity = old_demo(home)
    monkeypatch.setenv("RECIPES_CONFIG", str(cfg))
    runner = CliRunner()
    first = runner.invoke(cli.main, ["init"])
    assert first.exit_code == 0, first.output
    assert "added only what was missing" in first.output
    second = runner.invoke(cli.main, ["init"])
    assert second.exit_code == 0, second.output
    assert "nothing added" in second.output
    assert (conf_dir(home) / "identity.txt").read_bytes() == identity
    assert_usable(cfg)


def test_init_keeps_existing_values_and_names_a_mismatch(home: Path) -> None:
    """signing_key and signers already set: a missing key file is made at the configured place only."""
    cfg, _ = old_demo(home)
    other = signing.generate_signing_key(home / "elsewhere", "other")
    text = cfg.read_text().replace(
        "[repository]\n", f'[repository]\nsigning_key = "keys/sk"\nsigners = ["{other.public.line}"]\n'
    )
    cfg.write_text(text)
    result = keys.init(str(cfg), None, False)
    assert cfg.read_text() == text
    made = signing.load_signing_key(str(cfg.parent / "keys" / "sk"))
    assert result["signing_key"] == str(cfg.parent / "keys" / "sk")
    assert any(made.public.fingerprint in n and "not among" in n for n in result["notes"])
    assert "note: the signing key" in keys.init_message(result)


def test_init_adds_only_signers_when_signing_key_is_set(home: Path) -> None:
    cfg, _ = old_demo(home)
    key = signing.generate_signing_key(home / "mine", "mine")
    cfg.write_text(
        cfg.read_text().replace("[repository]\n", f'[repository]\nsigning_key = "{home / "mine"}"\n')
    )
    keys.init(str(cfg), None, False)
    data = tomllib.loads(cfg.read_text())["repository"]
    assert data["signing_key"] == str(home / "mine")
    assert data["signers"] == [key.public.line]
    assert not (cfg.parent / "signing_key").exists()


def test_init_on_a_config_without_repository_table_appends_one(home: Path) -> None:
    d = conf_dir(home)
    d.mkdir(parents=True)
    cfg = d / "recipes.toml"
    cfg.write_text('# mine\n[retention]\nfull_every = "1M"')
    keys.init(None, None, False)
    data = tomllib.loads(cfg.read_text())
    assert data["retention"] == {"full_every": "1M"}
    assert set(data["repository"]) == {"signing_key", "signers"}
    assert cfg.read_text().startswith('# mine\n[retention]\nfull_every = "1M"\n')
    assert_usable(cfg)


def test_init_refuses_to_guess_with_an_inline_repository_table(home: Path) -> None:
    d = conf_dir(home)
    d.mkdir(parents=True)
    cfg = d / "recipes.toml"
    text = 'repository = { url = "/srv/repo" }\n'
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        keys.init(None, None, False)
    assert "\n" not in str(exc.value) and "add these lines under [repository] yourself" in str(exc.value)
    assert cfg.read_text() == text


@pytest.mark.parametrize(
    ("text", "head"),
    [
        (
            '# top\n[ repository ]  # where snapshots go\nurl = "/srv/r"\n[retention]\nfull_every = "1M"',
            "# top\n[ repository ]  # where snapshots go\n",
        ),
        ('[retention]\nfull_every = "1M"\n[repository]', '[retention]\nfull_every = "1M"\n[repository]\n'),
    ],
)
def test_init_finds_the_header_with_a_comment_or_at_the_end(home: Path, text: str, head: str) -> None:
    d = conf_dir(home)
    d.mkdir(parents=True)
    cfg = d / "recipes.toml"
    cfg.write_text(text)
    keys.init(None, None, False)
    after = cfg.read_text()
    assert after.startswith(f"{head}{keys.ADDED_COMMENT}\n")
    assert tomllib.loads(after)["retention"] == {"full_every": "1M"}
    assert_usable(cfg)


def test_init_with_a_bad_existing_signing_key_fails_and_changes_nothing(home: Path) -> None:
    old_demo(home)
    signing.generate_signing_key(conf_dir(home) / "signing_key", "x")
    os.chmod(conf_dir(home) / "signing_key", 0o644)
    before = snapshot(conf_dir(home))
    with pytest.raises(ConfigError, match="mode 0644"):
        keys.init(None, None, False)
    assert snapshot(conf_dir(home)) == before


def test_force_starts_over(home: Path) -> None:
    keys.init(None, None, False)
    d = conf_dir(home)
    before = snapshot(d)
    result = keys.init(None, "/srv/elsewhere", True)
    after = snapshot(d)
    for name in ("identity.txt", "signing_key", "signing_key.pub", "recipes.toml"):
        assert after[name] != before[name], name
    assert config.load(result["config"]).repository.url == "/srv/elsewhere"
    assert_usable(d / "recipes.toml")


def test_force_keeps_the_old_identity_key_and_config_beside_the_new_ones(home: Path) -> None:
    """The old identity is the only key to every snapshot made before: --force never deletes it."""
    keys.init(None, None, False)
    d = conf_dir(home)
    before = snapshot(d)
    cli_result = CliRunner().invoke(cli.main, ["init", "--force"])
    assert cli_result.exit_code == 0, cli_result.output
    kept = {p.name.split(".replaced-")[0]: p for p in d.iterdir() if ".replaced-" in p.name}
    assert sorted(kept) == ["identity.txt", "recipes.toml", "signing_key", "signing_key.pub"]
    for name, path in kept.items():
        assert path.read_bytes() == before[name], name
    assert os.stat(kept["identity.txt"]).st_mode & 0o777 == 0o600
    assert f"the old age identity is kept at {kept['identity.txt']}" in cli_result.output
    assert (d / "identity.txt").read_bytes() != before["identity.txt"]
    assert_usable(d / "recipes.toml")


def test_missing_config_reuses_an_existing_identity_and_key(home: Path) -> None:
    cfg, identity = old_demo(home)
    key = signing.generate_signing_key(conf_dir(home) / "signing_key", "kept")
    recipient = config.load(str(cfg)).repository.recipients[0]
    cfg.unlink()
    result = keys.init(None, None, False)
    assert (conf_dir(home) / "identity.txt").read_bytes() == identity
    assert result["recipient"] == recipient
    assert assert_usable(cfg).public == key.public
    assert "SECRET KEY" not in keys.init_message(result)


def test_missing_config_with_a_garbage_identity_fails_with_one_line(home: Path) -> None:
    d = conf_dir(home)
    d.mkdir(parents=True)
    (d / "identity.txt").write_text("not a key\n")
    with pytest.raises(ConfigError) as exc:
        keys.init(None, None, False)
    assert "\n" not in str(exc.value) and "--force" in str(exc.value)
    assert not (d / "recipes.toml").exists()


def test_repo_option_on_an_existing_config_is_reported_as_ignored(home: Path) -> None:
    cfg, _ = old_demo(home)
    result = keys.init(None, "/srv/other", False)
    assert config.load(str(cfg)).repository.url == str(home / "repo")
    assert any("--repo /srv/other ignored" in n for n in result["notes"])


def test_force_that_fails_after_moving_the_old_keys_says_where_they_went(home: Path, tmp_path: Path) -> None:
    """A full disk once the old files are aside (renames need no space, new files do): the one
    line says where the old identity went, the only key to the snapshots made before."""
    keys.init(None, None, False)
    d = conf_dir(home)
    old = (d / "identity.txt").read_bytes()
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        moved = disk / "recipes"
        moved.mkdir()
        for p in d.iterdir():
            (moved / p.name).write_bytes(p.read_bytes())
        with open(disk / "filler", "wb", buffering=0) as fh, pytest.raises(OSError):  # disk full from here
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        result = CliRunner().invoke(cli.main, ["--config", str(moved / "recipes.toml"), "init", "--force"])
        assert result.exit_code == 2, result.output
        line = result.output.strip().splitlines()[-1]
        (aside,) = moved.glob("identity.txt.replaced-*")
        assert aside.read_bytes() == old
        assert line.startswith("recipes: error: init --force failed (") and str(aside) in line, line
    finally:
        subprocess.run(["umount", str(disk)], check=False)
