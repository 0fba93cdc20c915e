"""Restore runbooks: a recipe's backup and restore plans as a written procedure (Markdown or HTML).

Everything a runbook says about the procedure is rendered from the ops the engine executes
(``plan.restore_plan`` -> ``Plan.steps`` -> each step's ``ops()``, ``rendering.op_lines``, the
endpoints' ``describe()``) and the break-glass blocks of ``recipes.breakglass``; nothing
describes a procedure a second time, so the runbook cannot drift from what ``recipes restore``
does. A small document model (sections, paragraphs, lists, tables, code) is built once and
rendered twice, so the Markdown and the HTML say the same. Secret values are never read: a
runbook names where each key is kept and which variable holds each password.
"""

from __future__ import annotations

import contextlib
import html as html_lib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import attrs

from recipes import breakglass, ops
from recipes import manifest as mf
from recipes import render as rendering
from recipes.compression import DEFAULT_COMPRESSION, Compression
from recipes.errors import ConfigError, StepFailed, masked
from recipes.model import Command, sh
from recipes.plan import Plan, backup_plan, options_of, restore_plan
from recipes.recipe import Recipe
from recipes.render import kind
from recipes.steps import Archive, KeyFile, Step

FORMATS = ("md", "html")
DEFAULT_IDENTITY = "~/.config/recipes/identity.txt"
DEFAULT_SIGNING_KEY = "~/.config/recipes/signing_key"

# ---- the document model ---------------------------------------------------------------------


@attrs.frozen
class Para:
    """A paragraph; `backticks` mark code spans."""

    text: str


@attrs.frozen
class Code:
    """A fenced block shown exactly as written (``lang`` ``sh`` for blocks meant to be run)."""

    text: str
    lang: str = ""


@attrs.frozen
class Items:
    """A bulleted (or numbered) list of one-paragraph items."""

    items: tuple[str, ...]
    ordered: bool = False


@attrs.frozen
class Table:
    """A table of plain cells (`backticks` allowed)."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@attrs.frozen
class Section:
    """A titled part; sections nest (a heading one level deeper each time)."""

    title: str
    body: tuple[Part, ...]


Part: TypeAlias = Para | Code | Items | Table | Section


@attrs.frozen
class Document:
    """A whole runbook: a title and its parts."""

    title: str
    body: tuple[Part, ...]


# ---- what the configuration says (never a secret value) -------------------------------------


@attrs.frozen
class Settings:
    """The configuration a runbook shows: where snapshots and keys are, how long they are kept.
    Paths are as written in the configuration (``~`` kept), so a runbook reads the same on any
    controller."""

    repo_url: str
    config_path: str | None = None
    identity_file: str = DEFAULT_IDENTITY
    signing_key: str = DEFAULT_SIGNING_KEY
    signers: tuple[str, ...] = ()
    retention: dict[str, Any] = attrs.Factory(dict)
    host_key_file: str | None = None
    sudo: bool = False
    """The host's ``[hosts.*] sudo = true``: the break-glass blocks run each command as recipes does."""


def settings_of(cfg: Any, host: str, repo: str | None = None) -> Settings:
    """The runbook's view of a loaded ``config.Config`` (``repo``: a ``--repo`` override)."""
    retention = {k: v for k, v in attrs.asdict(cfg.retention).items() if v is not None}
    h = cfg.hosts.get(host)
    return Settings(
        repo_url=masked(cfg.repository_url(repo)),  # a password in the URL never reaches a runbook
        config_path=cfg.path,
        identity_file=cfg.repository.identity_file or DEFAULT_IDENTITY,
        signing_key=cfg.repository.signing_key or DEFAULT_SIGNING_KEY,
        signers=tuple(cfg.repository.signers),
        retention=retention,
        host_key_file=h.key_file if h is not None else None,
        sudo=h.sudo if h is not None else False,
    )


# ---- building the document ------------------------------------------------------------------


def _code(text: str) -> str:
    """``text`` as one inline code span (a span never holds a backtick or a newline)."""
    return "`" + " ".join(text.replace("`", "'").split()) + "`"


def _size(n: int) -> str:
    from recipes.output import human_size

    return f"{human_size(n)} ({n} bytes)"


def _commands(op_list: list[ops.Op]) -> Iterator[Command]:
    for op in op_list:
        if isinstance(op, (ops.Exec, ops.Undo)):
            yield op.command
        elif isinstance(op, ops.Guard):
            yield op.probe
        elif isinstance(op, ops.Transfer):
            for end in (op.src, op.dst):
                if isinstance(end, ops.HostCommand):
                    yield from (c for c in (end.command, end.incremental, end.check) if c is not None)


def _ends(op_list: list[ops.Op]) -> Iterator[ops.Endpoint]:
    for op in op_list:
        if isinstance(op, ops.Transfer):
            yield op.src
            yield op.dst


def _excludes(recipe: Recipe, params: Any, backup: Plan) -> list[str]:
    """What is deliberately left out: every archive's excludes, with the reasons the recipe gives
    (its ``exclude_reasons(params)``; with one, only the paths it names are choices to show)."""
    method = getattr(recipe, "exclude_reasons", None)
    reasons: dict[str, str] | None = method(params) if method is not None else None
    out = []
    for step in backup.steps:
        if isinstance(step, Archive) and step.excludes:
            for item in step.excludes:
                if reasons is not None and item not in reasons:
                    continue  # a pattern of the recipe's own making (only_member), not a choice
                why = reasons.get(item) if reasons is not None else None
                where = f" (under {step.root})" if step.root not in ("/", "") else ""
                out.append(f"{_code(item)}{where}" + (f": {why}" if why else ""))
    return out


def _backed_up(recipe: Recipe, backup: Plan) -> list[Part]:
    """The backup plan's steps, as a table, and every command it runs."""
    rows = []
    for i, step in enumerate(backup.steps, 1):
        stored = _stored(step)
        rows.append((str(i), kind(step), step.name, step.about or "", stored))
    parts: list[Part] = [
        Para(
            f"The backup plan (`recipes plan {backup.recipe} --host {backup.host}`), step by step; "
            "what each step stores, and from where:"
        ),
        Table(("#", "kind", "step", "what and why", "stored as"), tuple(rows)),
    ]
    roots = [(s.name, s.root) for s in backup.steps if isinstance(s, Archive)]
    if roots:
        parts.append(Items(tuple(f"paths: {_code(root)} ({name}; excludes below)" for name, root in roots)))
    parts.append(Section("Every command the backup runs (masked)", (Code("\n".join(backup.lines())),)))
    return parts


def _stored(step: Step) -> str:
    names = []
    for op in step.ops():
        if isinstance(op, ops.Transfer):
            for end in (op.src, op.dst):
                if isinstance(end, (ops.SnapshotObject, ops.KeyStore)):
                    names.append(_code(end.describe()))
                elif isinstance(end, ops.DuplicityCollection) and end is op.dst:
                    names.append(_code(f"duplicity {end.url}"))
    if isinstance(step, KeyFile):
        names.append("(never in the repository)")
    return ", ".join(names)


def _where(recipe: Recipe, params: Any, settings: Settings, backup: Plan, external: bool) -> list[Part]:
    if external:
        source = getattr(params, "source", "")
        return [
            Para(
                f"Backups are the duplicity + GnuPG collection {_code(source)} (encrypted with GnuPG, "
                "read on the controller by duplicity); a restore reads it, never a recipes repository."
            )
        ]
    folder = f"{settings.repo_url.rstrip('/')}/{recipe.name}/<host>/<snapshot>/"
    parts: list[Part] = [
        Para(
            f"Snapshots are in the repository {_code(settings.repo_url)}, each in {_code(folder)}: "
            "`manifest.json` (objects, sizes, sha256, facts; written last) and its signature "
            "`manifest.sig` (sshsig, namespace `recipes-manifest`), then every object as "
            "`<name>.zst.age` (tar or dump, zstd, age)."
        )
    ]
    stores = sorted({end.url for end in _ends(backup.ops()) if isinstance(end, ops.KeyStore)})
    for url in stores:
        parts.append(Para(f"Key files are kept apart from the repository, in the key store {_code(url)}."))
    return parts


def _schedule(recipe: Recipe, host: str, settings: Settings, external: bool) -> list[Part]:
    rows = tuple((_code(k), _code(str(v))) for k, v in sorted(settings.retention.items()))
    where = f" of {_code(settings.config_path)}" if settings.config_path else " (defaults)"
    parts: list[Part] = [
        Para(
            f"Scheduled with `recipes schedule {recipe.name} --host {host} --install` (a systemd timer "
            "or cron file: prune, then back up, every night; a weekly `verify --all`; quiet unless "
            "something fails)."
        ),
    ]
    if not external:
        parts += [Para(f"Retention, `[retention]`{where}:"), Table(("setting", "value"), rows)]
    return parts


def _prerequisites(
    recipe: Recipe, params: Any, host: str, settings: Settings, restore: Plan, external: bool
) -> list[Part]:
    """Each credential and key the restore needs and where it is kept, never its value."""
    items: list[str] = []
    config = _code(settings.config_path) if settings.config_path else "the configuration"
    items.append(
        f"SSH access to the target host {_code(host)} as a user allowed to write where the restore "
        "writes (root, or `sudo = true` in its `[hosts.*]` entry)"
        + (f"; key file {_code(settings.host_key_file)}" if settings.host_key_file else "")
    )
    if not external:
        items += [
            f"The age identity (the secret key that decrypts every object): {_code(settings.identity_file)} "
            f"on the controller (`[repository] identity_file` in {config}); `recipes restore --identity "
            "FILE` takes another copy.",
            "The public keys trusted to sign manifests: `[repository] signers` in "
            f"{config}"
            + (f" ({len(settings.signers)} configured)" if settings.signers else "")
            + "; for the break-glass restore, the same lines as an allowed-signers file "
            "(`recipes-manifest` namespace).",
            "For a drill (which signs its record): the controller's signing key "
            f"{_code(settings.signing_key)}.",
        ]
        if settings.repo_url.startswith("s3://"):
            items.append(
                "The repository's S3 credentials: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or an AWS "
                "profile) in the controller's environment, never in the file."
            )
    op_list = restore.ops()
    seen: set[str] = set()
    for end in _ends(op_list):
        if isinstance(end, ops.KeyStore) and end.url not in seen:
            seen.add(end.url)
            items.append(
                f"The key file {_code(end.name)}: in the key store {_code(end.describe())}, "
                "age-encrypted (the same identity decrypts it)."
            )
        if isinstance(end, ops.DuplicityCollection) and end.url not in seen:
            seen.add(end.url)
            items.append(
                f"The GnuPG secret key of the collection: {_code(end.gpg_key_file)} on the controller "
                "(imported into a temporary GNUPGHOME only); its passphrase in the controller "
                f"environment variable {_code(end.passphrase_env)}."
            )
            if end.aws_key_env or end.aws_secret_env:
                names = ", ".join(_code(n) for n in (end.aws_key_env, end.aws_secret_env) if n)
                items.append(f"The collection's AWS credentials: controller environment variables {names}.")
            if end.sign_key:
                items.append(f"The GnuPG public key {_code(end.sign_key)} every file must be signed by.")
    for op in op_list:
        if isinstance(op, ops.Exec) and op.capture and op.secret and op.capture not in seen:
            seen.add(op.capture)
            items.append(
                f"{_code(op.capture)}: read from the new cluster at restore time with "
                f"{_code(op.command.masked())}, held in memory only (never stored)."
            )
    for command in _commands(op_list):
        for name, secret in command.secrets:
            if secret.env not in seen:
                seen.add(secret.env)
                items.append(
                    f"A password in the controller environment variable {_code(secret.env)} "
                    f"(sent to the host on stdin as {_code(name)}, never in argv)."
                )
    parts: list[Part] = [Items(tuple(items))]
    if not external and settings.signers:
        parts += [
            Para(
                "The allowed-signers file the break-glass restore checks each manifest's signature with "
                "(`ALLOWED_SIGNERS`, for `ssh-keygen -Y verify`): these lines, from `[repository] signers` "
                "(public keys only)."
            ),
            Code(breakglass.allowed_signers(settings.signers).rstrip("\n")),
        ]
    elif not external:
        parts.append(
            Para(
                "No `[repository] signers` are configured: restore refuses every signed snapshot until "
                "the public key of each controller that signs is listed there."
            )
        )
    return [
        *parts,
        Para(
            "Seed 002 warns that a recovery plan can fail because the decryption key is stored only "
            "on the server itself, and is gone when it is needed. Keep every key above somewhere other "
            "than the servers it protects and other than this controller alone (an offline copy), and "
            "check at each drill that the copy still opens the backups."
        ),
    ]


def _check_text(step: Step) -> str:
    """How to see one step worked, from its ops."""
    out: list[str] = []
    for op in step.ops():
        if isinstance(op, ops.Guard):
            out.append(f"before anything is written: {op.verdict.describe()} (one line, exit 2)")
        elif isinstance(op, ops.Manual):
            out.append("yours to confirm: the restore does not do it")
        elif isinstance(op, ops.Exec) and not op.capture:
            exits = "any exit" if op.ok_exits is None else "exit " + "/".join(str(e) for e in op.ok_exits)
            if op.sets:
                out.append("a probe: its answer decides what runs next")
            else:
                out.append(f"{_code(op.what)} ends with {exits}")
        elif isinstance(op, ops.Exec):
            out.append(f"{_code('{{' + (op.capture or '') + '}}')} is read (a non-empty answer)")
        elif isinstance(op, ops.Transfer):
            if isinstance(op.src, ops.SnapshotObject):
                out.append(
                    f"{_code(op.src.describe())} matches its manifest's sha256 before a byte is written"
                )
            if isinstance(op.dst, ops.HostCommand):
                if op.dst.check is not None:
                    out.append(f"then {_code(op.dst.check.masked())} succeeds")
                if op.dst.error_pattern:
                    out.append(f"no stderr line matches {_code(op.dst.error_pattern)}")
                out.append("the host command exits 0")
            if isinstance(op.dst, ops.Bucket):
                out.append(f"every object is back in {_code('s3://' + op.dst.bucket)}")
            if isinstance(op.src, ops.DuplicityCollection):
                out.append("duplicity verifies the collection's signatures and restores the file")
    return "; ".join(dict.fromkeys(out)) or "the step ends without an error"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _procedure(
    recipe: Recipe,
    host: str,
    restore: Plan,
    manifest: mf.Manifest | None,
    drill: dict[str, Any] | None,
    external: bool,
    snapshot: str | None,
) -> list[Part]:
    which = manifest.snapshot if manifest else (snapshot or "latest")
    command = f"recipes restore {recipe.name} --host {sh(host)} --snapshot {sh(which)}"
    timings: dict[str, float] = {}
    if drill:
        for s in drill.get("steps", []):
            if isinstance(s, dict) and isinstance(s.get("name"), str):
                timings[s["name"]] = float(s.get("seconds", 0.0))
    parts: list[Part] = [
        Para("Run on the controller (it asks nothing; `--plan` prints the same steps and runs none):"),
        Code(command, "sh"),
        Para(
            "It stops at the first failure and undoes what it registered (starts what it stopped, moves "
            "back what it moved aside). What it does, step by step (commands masked: `***` is a "
            "password read from the controller's environment):"
        ),
    ]
    if not external:
        parts.insert(
            2,
            Para(
                "Before any byte reaches the host it checks every manifest of the snapshot's chain "
                "(signed by a trusted key) and the sha256 of every object it reads."
            ),
        )
    for i, step in enumerate(restore.steps, 1):
        lines = [line for op in step.ops() for line in rendering.op_lines(op, restore.compression, "restore")]
        if step.name in timings:
            when = drill.get("finished", "?") if drill else "?"
            took = f"{_seconds(timings[step.name])} in the last drill ({when})"
        else:
            took = "not measured yet (no drill recorded this step)"
        body: list[Part] = []
        if step.about:
            body.append(Para(step.about))
        body += [
            Code("\n".join(lines)),
            Items((f"Expected duration: {took}.", f"Check: {_check_text(step)}.")),
        ]
        parts.append(Section(f"{i}. {kind(step)} {step.name}", tuple(body)))
    return parts


def _manual(restore: Plan) -> list[Part]:
    entries = []
    for i, step in enumerate(restore.steps, 1):
        for op in step.ops():
            if isinstance(op, ops.Manual):
                text = f"(step {i}, {step.name}) {op.text}"
                if op.shell:
                    text += f": {_code(op.shell)}"
                entries.append(text)
    if not entries:
        return [Para("None: every step of this restore is run by `recipes restore`.")]
    return [
        Para("In this order, after the step named (never run by recipes; yours to do and to tick off):"),
        Items(tuple(entries), ordered=True),
    ]


def _snapshot(manifest: mf.Manifest) -> list[Part]:
    rows = tuple(
        (_code(o.path), o.kind, _size(o.size), _code(o.sha256))
        for o in (*manifest.objects, *manifest.external)
    )
    kind_text = f"incremental level {manifest.level} on {manifest.parent}" if manifest.level else "full"
    return [
        Para(
            f"Snapshot {_code(manifest.snapshot)} of {manifest.recipe}@{manifest.host} ({kind_text}), "
            f"taken {manifest.started} to {manifest.finished}; its signature verified when this "
            "runbook was written."
        ),
        Table(("object", "kind", "stored size", "sha256 (of the stored bytes)"), rows),
    ]


def _breakglass(
    restore: Plan,
    repo_url: str,
    manifest: mf.Manifest | None,
    chain: Sequence[mf.Manifest] | None,
    sudo: bool,
) -> list[Part]:
    parts: list[Part] = [
        Para(
            "When `recipes` itself cannot run: the same restore with standard tools only. Save the "
            "blocks, in order and as written, into one file and run it with `bash FILE` (not pasted "
            "into a terminal: the first failed check stops the script with `exit`); each block says "
            "how to check it worked."
        )
    ]
    for block in breakglass.blocks(restore, repo_url, manifest, chain, sudo=sudo):
        body: list[Part] = [Code(block.script, "sh")]
        if block.check:
            body.append(Para(f"Check: {block.check}"))
        parts.append(Section(block.title, tuple(body)))
    return parts


def _drill(recipe: Recipe, host: str, drill: dict[str, Any] | None) -> list[Part]:
    if not drill:
        return [
            Para(
                f"No drill recorded yet. Prove this restore on a scratch host: "
                f"`recipes drill {recipe.name} --host {host} --to-host SCRATCH`."
            )
        ]
    verdict = "passed" if drill.get("passed") else "FAILED"
    rto = float(drill.get("rto_seconds", 0.0))
    parts: list[Part] = [
        Para(
            f"The last drill {verdict}: snapshot {_code(str(drill.get('snapshot', '?')))} restored onto "
            f"{_code(str(drill.get('scratch', '?')))} from {drill.get('started', '?')} to "
            f"{drill.get('finished', '?')}; time to recover {_seconds(rto)}."
        )
    ]
    checks = [c for c in drill.get("checks", []) if isinstance(c, dict)]
    if checks:
        rows = tuple(
            (
                str(c.get("name", "")),
                "ok" if c.get("ok") else "FAILED",
                str(c.get("expected", "")),
                str(c.get("found", "")),
            )
            for c in checks
        )
        parts.append(Table(("check", "result", "expected", "found"), rows))
    return parts


def document(
    recipe: Recipe,
    params: Any,
    host: str,
    settings: Settings,
    *,
    manifest: mf.Manifest | None = None,
    options: Any = None,
    drill: dict[str, Any] | None = None,
    compression: Compression = DEFAULT_COMPRESSION,
    snapshot: str | None = None,
    chain: Sequence[mf.Manifest] | None = None,
) -> Document:
    """The runbook of ``recipe`` restoring onto ``host``: with ``manifest`` (a verified snapshot)
    its real object names, sizes and sha256 (for an incremental, of its whole ``chain``, full
    first: read from the repository when not given); ``drill`` is the last drill record, if any."""
    external = bool(getattr(recipe, "external_restore", False))
    backup = backup_plan(recipe, params, host, compression)
    restore = restore_plan(recipe, params, host, compression, options)
    repo_url = getattr(params, "source", settings.repo_url) if external else settings.repo_url
    snap = f", snapshot {manifest.snapshot}" if manifest else (f", {snapshot}" if snapshot else "")
    body: list[Part] = [
        Para(
            f"{recipe.summary}. Source document: the seed `{recipe.seed}` (not part of this "
            "repository). Generated by `recipes runbook` "
            "from the same steps `recipes restore` runs: regenerate it after any change of "
            "configuration or version, never edit it by hand."
        ),
        Section("What is backed up, and from where", tuple(_backed_up(recipe, backup))),
        Section("Where the backups live", tuple(_where(recipe, params, settings, backup, external))),
        Section("Schedule and retention", tuple(_schedule(recipe, host, settings, external))),
    ]
    left_out = _excludes(recipe, params, backup)
    body.append(
        Section(
            "What is deliberately not backed up",
            (
                Items(tuple(left_out))
                if left_out
                else Para("Nothing is excluded beyond what the steps above name."),
                Para(
                    "No secret is ever in a backup: the age identity, the signing key, passwords and "
                    "gateway keys are kept as the prerequisites below say."
                ),
            ),
        )
    )
    body.append(
        Section("Prerequisites", tuple(_prerequisites(recipe, params, host, settings, restore, external)))
    )
    if manifest is not None:
        body.append(Section("The snapshot", tuple(_snapshot(manifest))))
    body += [
        Section(
            "Restore procedure",
            tuple(_procedure(recipe, host, restore, manifest, drill, external, snapshot)),
        ),
        Section("Manual steps", tuple(_manual(restore))),
        Section(
            "Break-glass restore (standard tools only)",
            tuple(_breakglass(restore, repo_url, manifest, chain, settings.sudo)),
        ),
        Section("Last drill", tuple(_drill(recipe, host, drill))),
    ]
    return Document(f"Restore runbook: {recipe.name} on {host}{snap}", tuple(body))


# ---- rendering: Markdown ----------------------------------------------------------------------


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _md_parts(parts: tuple[Part, ...], level: int) -> list[str]:
    out: list[str] = []
    for part in parts:
        if isinstance(part, Section):
            out += [f"{'#' * level} {part.title}", ""]
            out += _md_parts(part.body, min(level + 1, 6))
        elif isinstance(part, Para):
            out += [part.text, ""]
        elif isinstance(part, Code):
            fence = _fence(part.text)
            out += [f"{fence}{part.lang}", part.text, fence, ""]
        elif isinstance(part, Items):
            for i, item in enumerate(part.items, 1):
                out.append(f"{i}. {item}" if part.ordered else f"- {item}")
            out.append("")
        else:
            out.append("| " + " | ".join(_cell(h) for h in part.header) + " |")
            out.append("|" + " --- |" * len(part.header))
            out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in part.rows]
            out.append("")
    return out


def markdown(doc: Document) -> str:
    """The document as GitHub-flavoured Markdown."""
    lines = [f"# {doc.title}", "", *_md_parts(doc.body, 2)]
    return "\n".join(lines).rstrip("\n") + "\n"


# ---- rendering: HTML --------------------------------------------------------------------------

_CSS = """
body { font: 11pt/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60em;
       margin: 2em auto; padding: 0 1em; color: #111; }
h1 { font-size: 1.6em; border-bottom: 2px solid #333; }
h2 { font-size: 1.3em; border-bottom: 1px solid #999; margin-top: 1.6em; }
h3 { font-size: 1.1em; }
code, pre { font: 9.5pt/1.35 ui-monospace, "DejaVu Sans Mono", monospace; }
pre { background: #f4f4f4; border: 1px solid #ccc; padding: .6em; white-space: pre-wrap;
      overflow-wrap: anywhere; }
pre.sh { border-left: 4px solid #2a6; }
table { border-collapse: collapse; margin: .6em 0; width: 100%; }
th, td { border: 1px solid #bbb; padding: .25em .4em; vertical-align: top; text-align: left;
         overflow-wrap: anywhere; }
th { background: #eee; }
@media print {
  body { margin: 0; max-width: none; font-size: 10pt; }
  h2 { break-after: avoid; page-break-after: avoid; }
  h3 { break-after: avoid; page-break-after: avoid; }
  pre, table, li { break-inside: avoid; page-break-inside: avoid; }
  pre { background: none; }
  a { color: inherit; text-decoration: none; }
}
"""


def _inline(text: str) -> str:
    """Escaped text with its `code spans` as <code>."""
    pieces = text.split("`")
    if len(pieces) % 2 == 0:  # an unpaired backtick: no spans
        return html_lib.escape(text)
    return "".join(
        f"<code>{html_lib.escape(p)}</code>" if i % 2 else html_lib.escape(p) for i, p in enumerate(pieces)
    )


def _html_parts(parts: tuple[Part, ...], level: int) -> list[str]:
    out: list[str] = []
    for part in parts:
        if isinstance(part, Section):
            out.append(f"<section><h{level}>{_inline(part.title)}</h{level}>")
            out += _html_parts(part.body, min(level + 1, 6))
            out.append("</section>")
        elif isinstance(part, Para):
            out.append(f"<p>{_inline(part.text)}</p>")
        elif isinstance(part, Code):
            cls = f' class="{html_lib.escape(part.lang)}"' if part.lang else ""
            out.append(f"<pre{cls}><code>{html_lib.escape(part.text)}</code></pre>")
        elif isinstance(part, Items):
            tag = "ol" if part.ordered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{_inline(i)}</li>" for i in part.items) + f"</{tag}>")
        else:
            head = "".join(f"<th>{_inline(h)}</th>" for h in part.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in part.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return out


def html(doc: Document) -> str:
    """The document as one self-contained, printable HTML file (inline CSS, no scripts, nothing
    fetched), every text escaped."""
    title = html_lib.escape(doc.title)
    return (
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en">',
                "<head>",
                '<meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                f"<title>{title}</title>",
                f"<style>{_CSS}</style>",
                "</head>",
                "<body>",
                f"<h1>{title}</h1>",
                *_html_parts(doc.body, 2),
                "</body>",
                "</html>",
            ]
        )
        + "\n"
    )


def render(
    recipe: Recipe,
    params: Any,
    host: str,
    settings: Settings,
    *,
    fmt: str = "md",
    manifest: mf.Manifest | None = None,
    options: Any = None,
    drill: dict[str, Any] | None = None,
    compression: Compression = DEFAULT_COMPRESSION,
    snapshot: str | None = None,
    chain: Sequence[mf.Manifest] | None = None,
) -> str:
    """The runbook as Markdown (``fmt="md"``) or self-contained HTML (``"html"``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"runbook --format {fmt!r}: use one of {', '.join(FORMATS)}")
    doc = document(
        recipe,
        params,
        host,
        settings,
        manifest=manifest,
        options=options,
        drill=drill,
        compression=compression,
        snapshot=snapshot,
        chain=chain,
    )
    return markdown(doc) if fmt == "md" else html(doc)


# ---- from a configuration (the CLI and docgen) ------------------------------------------------

LastDrill = Callable[[Any, str, str], "dict[str, Any] | None"]


def for_config(
    cfg: Any,
    recipe_name: str,
    host: str,
    *,
    snapshot: str | None = None,
    repo: str | None = None,
    fmt: str = "md",
    last_drill: LastDrill | None = None,
    config_name: str | None = None,
    sets: tuple[str, ...] = (),
) -> str:
    """The runbook of ``recipe_name`` on ``host`` with the parameters ``cfg`` gives it.

    ``snapshot`` (an id, a unique prefix or ``latest``) loads that snapshot's manifest and checks
    it exactly as ``recipes restore`` does (signed by a trusted signer, lying where it says, its
    whole chain too) before its object names, sizes and sha256 are written in; for a recipe that
    restores from a duplicity collection it is duplicity's ``--time``. ``last_drill(repository,
    recipe, host)`` returns the newest trusted drill record, if any. ``config_name`` is how the
    runbook names the configuration file (default: its path). ``sets`` are ``--set KEY=VALUE``
    overrides, restore options among them (DSS ``mode=elsewhere``), as ``recipes restore`` takes them.
    """
    from recipes import apps, chain, config
    from recipes.recipe import make_params, restore_values, split_options
    from recipes.repository import Repository

    if fmt not in FORMATS:
        raise ConfigError(f"runbook --format {fmt!r}: use one of {', '.join(FORMATS)}")
    r = apps.get(recipe_name)
    spec = cfg.host(host)
    given = f"{cfg.path or 'defaults'} [recipes.{recipe_name}]" + (" + --set" if sets else "")
    target, options = split_options(r, config.recipe_values(cfg, recipe_name, sets), given)
    params = make_params(r, target, given)
    if options is None and options_of(r) is not None:
        options = options_of(r)()  # type: ignore[misc]
    external = bool(getattr(r, "external_restore", False))
    manifest = None
    resolved = None
    repository = Repository(cfg.repository_url(repo), dict(cfg.repository.options))
    if snapshot is not None and external:
        if snapshot != "latest":
            options = attrs.evolve(options, time=snapshot)
    elif snapshot is not None:
        trust = cfg.trust()
        item = repository.find_listed(recipe_name, spec.name, snapshot)
        manifest = trust.check(item)

        def fetch(sid: str) -> Any:
            return repository.load_listed(manifest.recipe, manifest.host, sid)

        # the chain as checked, for the break-glass sums (read here with the repository's options)
        resolved = chain.resolve(manifest, trust.lookup(fetch))
        values, _ignored = restore_values(r, target, manifest.params)
        params = make_params(r, values, f"{given} + snapshot {manifest.snapshot}")
    drill = last_drill(repository, recipe_name, spec.name) if last_drill and not external else None
    settings = settings_of(cfg, spec.name, repo)
    if config_name is not None:
        settings = attrs.evolve(settings, config_path=config_name)
    return render(
        r,
        params,
        spec.name,
        settings,
        fmt=fmt,
        manifest=manifest,
        options=options,
        drill=drill,
        compression=cfg.compression(spec.name),
        snapshot=snapshot,
        chain=resolved,
    )


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so a
    reader never sees half a runbook; one line (exit 1, as for ``schedule -o``: the same command
    may work once the folder is there) when the folder cannot be written."""
    target = Path(path)
    folder = target.parent
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise StepFailed(
            f"cannot write the runbook to {path}: {exc.strerror or exc} "
            "(make the folder, or give another -o FILE)"
        ) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
