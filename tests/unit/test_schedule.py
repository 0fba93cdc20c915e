"""``recipes schedule``: the generated systemd units pass ``systemd-analyze verify`` and the cron
file has the right shape; both prune, then back up, quietly, and stop at the first failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipes import cli


def _run(tmp_path: Path, *args: str) -> tuple[int, str]:
    config = tmp_path / "recipes.toml"
    config.write_text('[hosts.web1]\naddress = "203.0.113.5"\n')
    result = CliRunner().invoke(
        cli.main, ["--config", str(config), "schedule", "django", "--host", "web1", *args]
    )
    return result.exit_code, result.output


def test_systemd_units_verify_and_run_prune_then_backup_quietly(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "-o", str(tmp_path / "units"))
    assert code == 0, out
    units = sorted(p.name for p in (tmp_path / "units").iterdir())
    assert units == [
        "recipes-django-web1-verify.service",
        "recipes-django-web1-verify.timer",
        "recipes-django-web1.service",
        "recipes-django-web1.timer",
    ]
    service = (tmp_path / "units/recipes-django-web1.service").read_text()
    starts = [line for line in service.splitlines() if line.startswith("ExecStart=")]
    assert [s.split(" -q ")[1].split()[0] for s in starts] == ["prune", "run"]  # in this order
    assert all(s.startswith(f"ExecStart={sys.executable} -m recipes --config ") for s in starts)
    assert "OnCalendar=daily" in (tmp_path / "units/recipes-django-web1.timer").read_text()
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "err"}
    check = subprocess.run(
        ["systemd-analyze", "verify", *map(str, sorted((tmp_path / "units").iterdir()))],
        capture_output=True,
        text=True,
        env=env,
    )
    assert check.returncode == 0, check.stderr


def test_cron_file_stops_at_the_first_failure_and_reads_the_env_file(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "--format", "cron", "--at", "02:30", "--no-verify")
    assert code == 0, out
    (line,) = [x for x in out.splitlines() if x and not x.startswith("#") and "=" not in x.split()[0]]
    fields = line.split(None, 6)
    assert fields[:6] == ["30", "2", "*", "*", "*", "root"]
    assert "set -a; [ ! -r /etc/recipes/env ] || . /etc/recipes/env; set +a;" in fields[6]
    assert " -q prune django --host web1 && " in fields[6] and fields[6].endswith("-q run django --host web1")


@pytest.mark.parametrize("fmt", ["systemd", "cron"])
def test_a_timeout_reaches_every_job(tmp_path: Path, fmt: str) -> None:
    """``schedule --timeout 20h``: prune, the backup and the weekly verify each get it, so a job
    that hangs fails (and mails) instead of waiting forever; each line is one the CLI takes."""
    code, out = _run(tmp_path, "--format", fmt, "--timeout", "20h", "-o", str(tmp_path / "out"))
    assert code == 0, out
    text = "\n".join(p.read_text() for p in sorted((tmp_path / "out").iterdir()))
    jobs = [j for j in (" -q prune ", " -q run ", " -q verify --all") if j in text]
    assert len(jobs) == 3, text
    for line in text.splitlines():
        for job in jobs:
            if job in line:
                for part in line.split(" && "):
                    if job in part:
                        assert " --timeout 20h" in part, part
    accepted = CliRunner().invoke(cli.main, ["prune", "--host", "web1", "--timeout", "20h", "--help"])
    assert accepted.exit_code == 0, accepted.output


def test_a_bad_timeout_for_the_jobs_is_one_line(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "--timeout", "tonight")
    assert code == 2 and "--timeout" in out and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "units").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "cron", "--at", "Mon *-*-* 03:00"], "cron takes hourly, daily, weekly or HH:MM"),
        (["--at", "not a calendar"], "not a systemd calendar expression"),
        (["--at", "25:00"], "not a systemd calendar expression"),  # looks like HH:MM, is not
        (["--at", "12:60"], "not a systemd calendar expression"),
    ],
)
def test_bad_schedules_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    code, out = _run(tmp_path, *args)
    assert code == 2 and message in out and len(out.strip().splitlines()) == 1, out


def test_a_calendar_expression_without_systemd_analyze_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A controller without systemd cannot check an expression: refused in one line, not a
    traceback; HH:MM needs no check and still works there."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, out = _run(tmp_path, "--at", "Mon *-*-* 03:00")
    assert code == 2 and "cannot check this calendar expression" in out, out
    assert len(out.strip().splitlines()) == 1, out
    code, out = _run(tmp_path, "--at", "03:00", "-o", str(tmp_path / "units"))
    assert code == 0, out
    assert "OnCalendar=*-*-* 03:00" in (tmp_path / "units/recipes-django-web1.timer").read_text()


def test_install_without_systemctl_is_one_line_saying_the_units_are_written_not_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A controller without systemd (a container): was a FileNotFoundError traceback."""
    from recipes import schedule

    units = tmp_path / "system"
    monkeypatch.setattr(schedule, "SYSTEMD_DIR", str(units))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, out = _run(tmp_path, "--install")
    assert code == 1, out
    assert len(out.strip().splitlines()) == 1, out
    assert out.startswith("recipes: error: cannot run systemctl (No such file or directory): ")
    assert f"the units are written in {units} but not enabled" in out
    assert "systemctl enable --now recipes-django-web1.timer recipes-django-web1-verify.timer" in out
    assert (units / "recipes-django-web1.timer").exists()


def test_install_whose_systemctl_fails_says_what_is_left_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recipes import schedule

    units = tmp_path / "system"
    monkeypatch.setattr(schedule, "SYSTEMD_DIR", str(units))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"  # what systemctl says in a container not booted with systemd
    fake.write_text(
        "#!/bin/sh\necho 'System has not been booted with systemd as init system (PID 1). Can'\"'\"'t "
        "operate.' >&2\necho 'Failed to connect to bus: Host is down' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code, out = _run(tmp_path, "--install")
    assert code == 1, out
    assert len(out.strip().splitlines()) == 1, out
    assert "systemctl daemon-reload failed (System has not been booted" in out
    assert f"written in {units} but not enabled; fix that and run `systemctl daemon-reload" in out


def test_a_cron_file_for_a_dotted_host_has_a_name_cron_runs(tmp_path: Path) -> None:
    """Debian's cron skips a file in /etc/cron.d whose name has a dot (run-parts' naming rules):
    a host given as an address or a domain name was silently never backed up."""
    config = tmp_path / "recipes.toml"
    config.write_text("")
    out_dir = tmp_path / "cron.d"
    args = ["schedule", "django", "--host", "root@10.0.0.5:2222", "--format", "cron", "-o", str(out_dir)]
    result = CliRunner().invoke(cli.main, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    (written,) = out_dir.iterdir()
    listed = subprocess.run(["run-parts", "--list", str(out_dir)], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == [str(written)], written.name
    assert "--host root@10.0.0.5:2222" in written.read_text()


def test_hosts_differing_only_by_dot_and_dash_get_cron_files_of_their_own(tmp_path: Path) -> None:
    """``db.example`` and ``db-example`` once both became ``recipes-django-db-example``: the second
    schedule overwrote the first, and one host was silently never backed up. A host name cron
    takes as it is keeps its name."""
    config = tmp_path / "recipes.toml"
    config.write_text("")
    out_dir = tmp_path / "cron.d"
    for host in ("db.example", "db-example", "db_example"):
        args = ["schedule", "django", "--host", host, "--format", "cron", "-o", str(out_dir)]
        result = CliRunner().invoke(cli.main, ["--config", str(config), *args])
        assert result.exit_code == 0, result.output
    listed = subprocess.run(["run-parts", "--list", str(out_dir)], capture_output=True, text=True, check=True)
    names = sorted(Path(line).name for line in listed.stdout.split())
    assert len(names) == 3 and "recipes-django-db-example" in names, names
    assert "recipes-django-db_example" in names, names
    hosts = {f"--host {h} " for h in ("db.example", "db-example", "db_example")}
    assert {next(h for h in hosts if h in (out_dir / n).read_text()) for n in names} == hosts


def test_an_output_that_cannot_be_written_is_one_line_exit_1_naming_the_file(tmp_path: Path) -> None:
    """A write failure of an output file is an operational failure (exit 1, not the usage error 2),
    named with the OS's reason: a folder under a regular file, a file name taken by a directory.
    (Real file-system errors: root ignores permission bits, so none is used here.)"""
    config = tmp_path / "recipes.toml"
    config.write_text("")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    taken = tmp_path / "cron.d"
    (taken / "recipes-django-web1").mkdir(parents=True)
    for out, named, why in [
        (blocker / "cron.d", blocker / "cron.d", "Not a directory"),
        (taken, taken / "recipes-django-web1", "Is a directory"),
    ]:
        args = ["schedule", "django", "--host", "web1", "--format", "cron", "-o", str(out)]
        done = subprocess.run(
            [sys.executable, "-m", "recipes", "--config", str(config), *args], capture_output=True, text=True
        )
        assert done.returncode == 1, done.stderr
        assert done.stderr.splitlines() == [
            f"recipes: error: cannot write the schedule to {named}: {why} "
            "(make the folder writable, or give another -o DIR)"
        ]


def test_percent_and_dollar_in_the_config_path_reach_the_command_as_written(tmp_path: Path) -> None:
    """cron turns an unescaped ``%`` into a newline (crontab(5)); systemd expands ``%x``
    specifiers and ``$VAR`` in ExecStart (systemd.service(5)). A config path holding them must
    reach recipes as written, not cut short or expanded."""
    import re
    import shlex

    folder = tmp_path / "50%off $HOME"
    folder.mkdir()
    config = folder / "recipes.toml"
    config.write_text('[hosts.web1]\naddress = "203.0.113.5"\n')

    def schedule(*args: str) -> str:
        result = CliRunner().invoke(
            cli.main, ["--config", str(config), "schedule", "django", "--host", "web1", *args]
        )
        assert result.exit_code == 0, result.output
        return result.output

    cron = schedule("--format", "cron")
    for line in [x for x in cron.splitlines() if x.startswith(("17 ", "47 "))]:
        command = re.split(r"(?<!\\)%", line.split(" root ", 1)[1])[0].replace("\\%", "%")  # as cron
        assert f"--config {shlex.quote(str(config))} " in command, command
    (tmp_path / "units").mkdir()
    schedule("-o", str(tmp_path / "units"))
    for unit in (tmp_path / "units").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):  # as systemd reads it: %% is %, $$ is $
                value = line[len("ExecStart=") :]
                bare = value.replace("%%", "").replace("$$", "")
                assert "%" not in bare and "$" not in bare, line  # nothing left to expand
                command = value.replace("%%", "%").replace("$$", "$")
                assert f"--config {shlex.quote(str(config))} " in command, line
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "err"}
    units = sorted(map(str, (tmp_path / "units").iterdir()))
    check = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr
