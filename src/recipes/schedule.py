"""``recipes schedule``: seed 002's ``/etc/cron.daily/duply`` made safe, as a systemd service and
timer pair or a cron file: prune, then the backup, quiet unless something is wrong (``-q``),
a non-zero exit on failure (systemd marks the unit failed; cron mails the error line), and
optionally a weekly ``verify --all``. Each run holds its recipe@host lock, so an overlong run is
never joined by the next one."""

from __future__ import annotations

import hashlib
import re
import shlex
import sys

import attrs

from recipes.errors import ConfigError

FORMATS = ("systemd", "cron")
# Where --install writes (tests point them at a folder of their own).
SYSTEMD_DIR = "/etc/systemd/system"
CRON_DIR = "/etc/cron.d"
# cron has no calendar expressions: the few names it can say, plus HH:MM every day
_CRON = {"hourly": "7 * * * *", "daily": "17 3 * * *", "weekly": "47 4 * * 0"}
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
# What needs no check by systemd-analyze: these names, and a valid HH:MM every day.
SIMPLE = ("hourly", "daily", "weekly")


def is_simple(at: str) -> bool:
    """``at`` is a name both formats know, or a valid HH:MM (25:00 is not)."""
    return at in SIMPLE or bool(_HHMM.match(at))


@attrs.frozen
class Files:
    """Generated files: name -> content (unit files, or one cron file)."""

    format: str
    files: dict[str, str]


def unit_name(recipe: str, host: str) -> str:
    """``recipes-django-web1``: only characters systemd unit names accept (a cron file's name
    has no dot either: see ``cron_name``)."""
    return "recipes-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{recipe}-{host}").strip("-")


def cron_name(recipe: str, host: str) -> str:
    """The cron file's name: cron ignores a file in /etc/cron.d whose name is not run-parts'
    ``[A-Za-z0-9_-]+`` (no dot). ``recipes-django-web1`` as is; when a character had to be
    changed, a short hash of ``RECIPE-HOST`` follows, so ``db.example`` and ``db-example`` (or
    ``a@b`` and ``a:b``) never share a file and one schedule never overwrites the other."""
    raw = f"{recipe}-{host}"
    name = "recipes-" + re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")
    if name == f"recipes-{raw}":
        return name
    return f"{name}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


def commands(
    recipe: str, host: str, config: str | None, verify: bool, timeout: str | None = None
) -> tuple[list[str], list[str]]:
    """The nightly command lines (prune, then run) and the weekly one (verify), absolute paths;
    each with ``--timeout`` when given, so a job that hangs fails (and mails) instead of waiting."""
    base = [sys.executable, "-m", "recipes", *(["--config", config] if config else []), "-q"]
    limit = ["--timeout", timeout] if timeout else []
    nightly = [
        shlex.join([*base, "prune", recipe, "--host", host, *limit]),
        shlex.join([*base, "run", recipe, "--host", host, *limit]),
    ]
    weekly = [shlex.join([*base, "verify", "--all", *limit])] if verify else []
    return nightly, weekly


def _cron_escaped(line: str) -> str:
    """A command line as a crontab field: cron turns an unescaped ``%`` into a newline."""
    return line.replace("%", "\\%")


def _systemd_escaped(text: str) -> str:
    """Text for a unit file's value: systemd expands ``%x`` specifiers in every one."""
    return text.replace("%", "%%")


def _exec_escaped(line: str) -> str:
    """A command line for ``ExecStart=``: specifiers, and ``$VAR`` which systemd expands there."""
    return _systemd_escaped(line).replace("$", "$$")


def generate(
    recipe: str,
    host: str,
    *,
    config: str | None,
    at: str,
    fmt: str,
    verify: bool,
    env_file: str,
    timeout: str | None = None,
) -> Files:
    """The files for ``fmt``; ``at`` is ``daily`` (default), ``hourly``, ``weekly``, ``HH:MM`` or,
    for systemd, any ``OnCalendar`` expression (checked by ``systemd-analyze calendar``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"schedule --format {fmt!r}: use one of {', '.join(FORMATS)}")
    name = unit_name(recipe, host)
    nightly, weekly = commands(recipe, host, config, verify, timeout)
    if fmt == "cron":
        name = cron_name(recipe, host)
        when = _cron_time(at)
        # Every job reads the env file (credentials for an S3 repository), the weekly verify too.
        source = f"set -a; [ ! -r {shlex.quote(env_file)} ] || . {shlex.quote(env_file)}; set +a; "
        lines = [
            f"# {name}: written by `recipes schedule`; prune, then back up {recipe} on {host}.",
            "# Quiet (-q): cron mails only when something fails (a warning or an error line).",
            "SHELL=/bin/sh",
            f"{when} root " + _cron_escaped(source + " && ".join(nightly)),
        ]
        if weekly:
            lines.append(f"{_CRON['weekly']} root {_cron_escaped(source + weekly[0])} >/dev/null")
        return Files("cron", {name: "\n".join(lines) + "\n"})
    calendar = "*-*-* " + at if _HHMM.match(at) else at
    service = "\n".join(
        [
            "[Unit]",
            f"Description=recipes: prune, then back up {_systemd_escaped(f'{recipe} on {host}')}",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=oneshot",
            f"EnvironmentFile=-{_systemd_escaped(env_file)}",
            *(f"ExecStart={_exec_escaped(line)}" for line in nightly),
            "",
        ]
    )
    timer = "\n".join(
        [
            "[Unit]",
            f"Description=recipes: nightly backup of {_systemd_escaped(f'{recipe} on {host}')}",
            "",
            "[Timer]",
            f"OnCalendar={calendar}",
            "Persistent=true",
            "RandomizedDelaySec=10min",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )
    files = {f"{name}.service": service, f"{name}.timer": timer}
    if weekly:
        files[f"{name}-verify.service"] = "\n".join(
            [
                "[Unit]",
                "Description=recipes: verify every snapshot (signatures, sha256)",
                "",
                "[Service]",
                "Type=oneshot",
                f"EnvironmentFile=-{_systemd_escaped(env_file)}",
                f"ExecStart={_exec_escaped(weekly[0])}",
                "",
            ]
        )
        files[f"{name}-verify.timer"] = "\n".join(
            [
                "[Unit]",
                "Description=recipes: weekly verify",
                "",
                "[Timer]",
                "OnCalendar=weekly",
                "Persistent=true",
                "",
                "[Install]",
                "WantedBy=timers.target",
                "",
            ]
        )
    return Files("systemd", files)


def _cron_time(at: str) -> str:
    if at in _CRON:
        return _CRON[at]
    match = _HHMM.match(at)
    if match is None:
        raise ConfigError(
            f"schedule --at {at!r}: cron takes hourly, daily, weekly or HH:MM "
            "(systemd calendar expressions need --format systemd)"
        )
    return f"{int(match.group(2))} {int(match.group(1))} * * *"
