"""How the CLI talks: on a terminal, progress bars and summary tables (rich); otherwise plain
timestamped lines for logs and cron mail. ``-q`` keeps warnings and errors only, ``-v`` adds every
command run (masked), ``-vv`` is debug."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

from recipes import progress
from recipes.errors import masked

if TYPE_CHECKING:
    from recipes import manifest as mf

NOISY = ("paramiko", "fsspec", "s3fs", "botocore", "aiobotocore", "invoke", "fabric", "asyncio")
# Never logged, even at -vv: botocore's signing steps (canonical request, string to sign, signature).
QUIET_ALWAYS = ("botocore.auth",)
# What a signed S3 request's debug line carries that must not reach a log: the access key id in
# the credential scope, signatures (replayable for minutes), session tokens, the header itself.
_SIGNED = (
    (re.compile(r"(Credential=)[^,\s'\"]+"), r"\1***"),
    (re.compile(r"(Signature=)[0-9a-fA-F]+"), r"\1***"),
    (re.compile(r"((?:Authorization|X-Amz-Security-Token)['\"]?\s*:\s*b?['\"])[^'\"]*", re.I), r"\1***"),
)
# Controller environment variables whose values are secrets wherever they appear.
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def redact(text: str) -> str:
    """``text`` without S3 signatures, credentials, session tokens or URL passwords."""
    text = masked(text)
    for pattern, repl in _SIGNED:
        text = pattern.sub(repl, text)
    for name in _SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 8:
            text = text.replace(value, "***")
    return text


class _Redacting(logging.Filter):
    """Scrubs each record our handlers write (libraries' debug lines quote signed requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging reports it itself; a filter must not raise
            return True
        ours = record.levelno >= logging.INFO and record.name.startswith("recipes")
        clean = masked(message) if ours else redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def human_size(n: float) -> str:
    """``1.2 GiB``: binary units, one decimal above bytes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def human_seconds(s: float) -> str:
    """``4.2s``, ``3m05s``, ``2h01m``."""
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def ratio(raw: int | None, stored: int) -> str:
    """raw/stored as ``3.2x``, or ``-`` when the raw size is not known (zstd ran on the host)."""
    if not raw or not stored:
        return "-"
    return f"{raw / stored:.1f}x"


class Timestamped(logging.Formatter):
    """``2026-11-23T21:50:01Z recipes: step archive files``: UTC, every line of a message."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        text = super().format(record)
        return "\n".join(f"{stamp} recipes: {line}" for line in text.splitlines() or [""])


class _Collecting(logging.Handler):
    """Remembers every warning, for the summary after a run."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings.append(record.getMessage())


class _ConsoleHandler(logging.Handler):
    """Log lines through the rich console, so they scroll above the progress bars."""

    STYLES = {logging.WARNING: "yellow", logging.ERROR: "bold red", logging.CRITICAL: "bold red"}

    def __init__(self, console: Any) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text

        try:
            line = Text(f"recipes: {self.format(record)}", style=self.STYLES.get(record.levelno, ""))
            self.console.print(line, soft_wrap=True, highlight=False)
        except Exception:
            self.handleError(record)


class Output:
    """Where and how much the CLI says, decided once from -q/-v/--json and whether stderr is a
    terminal."""

    def __init__(self, verbose: int, quiet: bool, stream: IO[str] | None = None) -> None:
        self.verbose = verbose
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.console: Any = None
        if self.tty:
            from rich.console import Console

            self.console = Console(file=self.stream, highlight=False)
        self.collected = _Collecting()

    @property
    def rich(self) -> bool:
        """Progress bars and tables: a terminal, and not -q."""
        return self.tty and not self.quiet

    def setup_logging(self) -> None:
        """Levels and one handler on the root logger. Like ``logging.basicConfig``, an embedding
        program's (or pytest's) handlers are left alone and ours is not added."""
        root = logging.getLogger()
        for h in list(root.handlers):
            if getattr(h, "_recipes", False):
                root.removeHandler(h)
        root.setLevel(logging.DEBUG if self.verbose > 1 else logging.WARNING if self.quiet else logging.INFO)
        commands = logging.getLogger("recipes.commands")
        commands.setLevel(logging.INFO if self.verbose else logging.WARNING)
        for noisy in NOISY:
            logging.getLogger(noisy).setLevel(logging.DEBUG if self.verbose > 1 else logging.WARNING)
        # paramiko logs a traceback for a host that does not answer; our HostError says it in one line
        logging.getLogger("paramiko.transport").setLevel(
            logging.DEBUG if self.verbose > 1 else logging.CRITICAL
        )
        for name in QUIET_ALWAYS:
            logging.getLogger(name).setLevel(logging.INFO)
        if root.handlers:
            return
        handler: logging.Handler
        if self.tty:
            handler = _ConsoleHandler(self.console)
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler = logging.StreamHandler(self.stream)
            handler.setFormatter(Timestamped("%(message)s"))
        for h in (handler, self.collected):
            h.addFilter(_Redacting())
            setattr(h, "_recipes", True)  # noqa: B010 (ours to remove on the next setup)
            root.addHandler(h)

    @contextlib.contextmanager
    def watching(self) -> Iterator[progress.Progress]:
        """Runs inside show progress bars on a terminal; elsewhere they only count."""
        if not self.rich:
            with progress.watching(progress.Progress()) as watcher:
                yield watcher
            return
        bars = Bars(self.console)
        with bars, progress.watching(bars):
            yield bars

    def print(self, renderable: Any) -> None:
        """A table or a line for people, on the terminal only."""
        if self.rich:
            self.console.print(renderable)


class Bars(progress.Progress):
    """rich progress bars: one line per step; a transfer's bytes, rate and ETA when its size is
    known. The counters are read on rich's refresh clock, never per chunk."""

    def __init__(self, console: Any) -> None:
        import rich.progress as rp

        meters: dict[Any, progress.Meter] = {}

        class _Progress(rp.Progress):
            def get_renderables(inner) -> Iterable[Any]:
                """Counters into the bars, on rich's refresh clock (a few times a second)."""
                tasks = {t.id: t for t in inner.tasks}
                for task_id, m in list(meters.items()):
                    if m.total is not None and m.done > m.total:
                        tasks[task_id].total = None  # past the expected size: no promise any more
                    inner.update(task_id, completed=m.done, files=m.files_done)
                for task in inner.tasks:
                    if not task.finished:
                        inner.update(task.id, info=numbers(task))
                return super().get_renderables()

        self._meters = meters
        self.bars = _Progress(
            rp.SpinnerColumn(finished_text="[green]✓[/]"),
            rp.TextColumn("{task.description}"),
            rp.BarColumn(bar_width=24),
            rp.TextColumn("{task.fields[info]}", style="progress.data.speed"),
            console=console,
            transient=False,
            refresh_per_second=5,
        )
        self.task: Any = None
        self.label = ""
        self.raws: dict[str, progress.Meter] = {}
        self.stored: dict[str, progress.Meter] = {}

    def __enter__(self) -> Bars:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None and self.task in self._meters:
            self._meters.pop(self.task)
        self.bars.stop()

    def step(self, kind: str, name: str) -> None:
        self.label = f"{kind} {name}"
        self.task = self.bars.add_task(
            self.label, total=None, moved=False, seconds=None, info="", files=None, files_total=None
        )

    def step_done(self, record: mf.StepRecord) -> None:
        if self.task is None:
            return
        m = self._meters.pop(self.task, None)
        done = m.done if m is not None else 1
        if m is not None:
            self.bars.update(self.task, files=m.files_done)
        self.bars.update(self.task, total=max(done, 1), completed=max(done, 1), seconds=record.seconds)
        task = next(t for t in self.bars.tasks if t.id == self.task)
        self.bars.update(self.task, info=numbers(task))
        self.bars.stop_task(self.task)
        self.task = None

    def meter(self, name: str, total: int | None = None, files_total: int | None = None) -> progress.Meter:
        m = progress.Meter(name, total, files_total)
        self.stored[name] = m
        if self.task is not None:
            self._meters[self.task] = m
            self.bars.reset(
                self.task,
                total=total,
                description=f"{self.label}: {name}",
                moved=True,
                files=None,
                files_total=files_total,
            )
        return m

    def raw(self, name: str) -> progress.Meter:
        m = self.raws[name] = progress.Meter(name)
        return m

    def raw_sizes(self) -> dict[str, int]:
        return {name: m.done for name, m in self.raws.items()}


def numbers(task: Any) -> str:
    """What follows a bar: bytes (of the expected total), rate and ETA, and an archive's files
    (of the expected count); or, once done, the bytes, files and the step's seconds."""
    seconds = task.fields.get("seconds")
    moved = task.fields.get("moved")
    files = file_count(task.fields.get("files"), task.fields.get("files_total"), seconds is None)
    if seconds is not None:
        if not moved:
            return human_seconds(seconds)
        return "  ".join([human_size(task.completed), *files, human_seconds(seconds)])
    if not moved:
        return human_seconds(task.elapsed or 0.0)
    parts = [human_size(task.completed) + (f" / {human_size(task.total)}" if task.total else "")]
    speed = task.speed
    if speed:
        parts.append(f"{human_size(speed)}/s")
        if task.total:
            parts.append(f"ETA {human_seconds(max(task.total - task.completed, 0) / speed)}")
    return "  ".join(parts + files)


def file_count(done: int | None, expected: int | None, running: bool) -> list[str]:
    """``1,234 / 5,000 files`` while an archive passes (the expected count only while it is
    not exceeded), ``5,012 files`` once done; nothing when nothing counted them."""
    if done is None:
        return []
    if running and expected and done <= expected:
        return [f"{done:,} / {expected:,} files"]
    return [f"{done:,} files"]


# ---- summaries


def run_rows(manifest: mf.Manifest, raw: dict[str, int]) -> list[tuple[str, str, str, str, str, str]]:
    """Per object: name, kind, stored size, raw/stored ratio, seconds, warnings."""
    return [
        (
            o.name,
            o.kind,
            human_size(o.size),
            ratio(raw.get(o.name), o.size),
            human_seconds(o.seconds),
            str(len(o.warnings)) if o.warnings else "",
        )
        for o in (*manifest.objects, *manifest.external)
    ]


def run_notes(manifest: mf.Manifest, warnings: list[str]) -> list[str]:
    """Lines under the run table: total, downtime, warnings (tar's and logged ones)."""
    kind = f"incremental level {manifest.level}" if manifest.level else "full"
    notes = [f"{manifest.snapshot} ({kind}): {human_size(manifest.size)} stored"]
    if manifest.downtime:
        notes.append(
            "downtime: " + ", ".join(f"{k} {human_seconds(v)}" for k, v in sorted(manifest.downtime.items()))
        )
    else:
        notes.append("downtime: none recorded")
    from recipes.steps import real_warnings

    for o in manifest.objects:
        real = real_warnings(o.warnings)
        if real:
            notes.append(f"warning: {o.name}: {len(o.warnings)} warning(s), e.g. {real[0]}")
        elif o.warnings:
            notes.append(f"{o.name}: tar left out {len(o.warnings)} socket(s), e.g. {o.warnings[0]}")
    notes += [f"warning: {w}" for w in warnings]
    return notes


def run_table(manifest: mf.Manifest, raw: dict[str, int], warnings: list[str]) -> Any:
    """The summary after ``recipes run``, as a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{manifest.recipe}@{manifest.host}", title_justify="left")
    for header, justify in (
        ("object", "left"),
        ("kind", "left"),
        ("stored", "right"),
        ("ratio", "right"),
        ("seconds", "right"),
        ("warnings", "right"),
    ):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in run_rows(manifest, raw):
        table.add_row(*row)
    notes = run_notes(manifest, warnings)
    styled = [Text(n, style="yellow" if n.startswith("warning") else "") for n in notes]
    return Group(table, *styled)


def restore_rows(records: list[mf.StepRecord]) -> list[tuple[str, str, str, str]]:
    """Per restore step: kind, name, seconds, outcome."""
    return [(r.kind, r.name, human_seconds(r.seconds), r.outcome) for r in records]


def restore_table(snapshot: str, target: str, records: list[mf.StepRecord], warnings: list[str]) -> Any:
    """The summary after ``recipes restore``, as a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{snapshot} onto {target}", title_justify="left")
    for header, justify in (("kind", "left"), ("step", "left"), ("seconds", "right"), ("outcome", "left")):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in restore_rows(records):
        table.add_row(*row)
    total = Text(f"{len(records)} steps in {human_seconds(sum(r.seconds for r in records))}")
    return Group(table, total, *(Text(f"warning: {w}", style="yellow") for w in warnings))
