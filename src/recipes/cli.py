"""The ``recipes`` command: parse, load config, call the API, print. Imports stay lazy for speed."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, NoReturn

import click

from recipes.errors import ConfigError, RecipeError, masked
from recipes.output import Output, human_size

log = logging.getLogger("recipes")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_VERIFY = 0, 1, 2, 3


class State:
    def __init__(self, config: str | None, as_json: bool, verbose: int, out: Output | None = None) -> None:
        self.config_path = config
        self.json = as_json
        self.verbose = verbose
        self.out = out or Output(verbose, False)
        self._config: Any = None

    @property
    def config(self) -> Any:
        if self._config is None:
            from recipes import config

            self._config = config.load(self.config_path)
        return self._config


def emit(state: State, data: Any, text: str, report: bool = False) -> None:
    """``data`` as JSON with --json, else ``text``. A ``report`` of what a command did (run,
    restore, prune, copy) is left out with -q: cron then mails only warnings and errors."""
    if state.json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif not (report and state.out.quiet):
        click.echo(text)


def one_line(text: str) -> str:
    """A message as one line: a stray newline (from a host's stderr, say) never splits it."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or "(no message)"


def fail(exc: RecipeError) -> NoReturn:
    click.echo(f"recipes: error: {masked(one_line(str(exc)))}", err=True)
    sys.exit(exc.exit_code)


def usage_error(exc: click.ClickException) -> NoReturn:
    """click's usage errors (unknown option, missing argument, bad value) as one line, exit 2."""
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    click.echo(f"recipes: error: {one_line(exc.format_message())}{hint}", err=True)
    sys.exit(exc.exit_code)


def _first_error(exc: BaseException) -> RecipeError | None:
    """The RecipeError an interrupt cut in on (its context chain), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RecipeError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Group(click.Group):
    """Turns every RecipeError and usage error into one line on stderr and its documented exit code."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `recipes` alone: click prints the help
        except click.ClickException as exc:
            usage_error(exc)

    def invoke(self, ctx: click.Context) -> Any:
        from recipes.interrupts import interrupts_as_exceptions

        try:
            # SIGTERM/SIGHUP (systemd stopping the job, a closed terminal) unwind every command
            # like Ctrl-C: locks released, partial copies removed, then exit 130
            with interrupts_as_exceptions():
                return super().invoke(ctx)
        except RecipeError as exc:
            fail(exc)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.ClickException as exc:
            usage_error(exc)
        except KeyboardInterrupt as exc:
            from recipes.interrupts import UNWIND_SECONDS, deadline, expired, signal_came, unwind_cut

            # Only the engine knows whether what it stopped runs again (engine.Interrupted).
            # A restore cut short after it began writing also says what the target holds.
            left = getattr(exc, "still_stopped", None)
            partial = getattr(exc, "partial", "")
            said = [*(left or ()), *([partial] if partial else [])]
            if unwind_cut.is_set() and not expired.is_set() and not signal_came.is_set():
                # the run had failed (or ended) and its clean-up after it outlasted its time:
                # that failure, not an "interrupted"
                first = _first_error(exc)
                took = f"took over {UNWIND_SECONDS:g}s (--timeout)"
                head = f"{first}; its clean-up then {took}" if first is not None else f"the run's end {took}"
                click.echo(f"recipes: error: {'; '.join([head, *said])}", err=True)
                sys.exit(1)
            if expired.is_set():  # --timeout: a failure of the run, said like one
                if left is not None and not said:
                    said = ["everything that was stopped was started again"]
                words = given.words() if (given := deadline()) is not None else "timed out (--timeout)"
                click.echo(f"recipes: error: {'; '.join([words, *said])}", err=True)
                sys.exit(1)
            if left is None:
                click.echo("recipes: interrupted", err=True)
            elif said:
                click.echo(f"recipes: interrupted: {'; '.join(said)}", err=True)
            else:
                click.echo("recipes: interrupted (everything that was stopped was started again)", err=True)
            sys.exit(130)


@click.group(cls=Group)
@click.option("--config", "config_path", metavar="FILE", help="recipes.toml to use.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors (for cron).")
@click.version_option(package_name="recipes")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, as_json: bool, verbose: int, quiet: bool) -> None:
    """Back up and restore applications the way their own documentation says.

    Exit codes: 0 ok, 1 failed, 2 usage or configuration error, 3 verification failed,
    130 interrupted.
    """
    if quiet and verbose:
        raise click.UsageError("-q and -v contradict each other: give one")
    out = Output(verbose, quiet)
    out.setup_logging()
    ctx.obj = State(config_path, as_json, verbose, out)


_pass_state = click.make_pass_decorator(State)


def _json_here(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(State).json = True  # type: ignore[union-attr]


def _seconds(value: str) -> float:
    """``--timeout``'s duration in seconds; a usage error when it is none or no time at all."""
    from recipes.chain import parse_duration
    from recipes.interrupts import LONGEST_TIMEOUT

    try:
        seconds = parse_duration(value).total_seconds()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter(f"{value!r} is no time at all: give a duration such as 6h")
    if seconds > LONGEST_TIMEOUT:
        raise click.BadParameter(f"{value!r} is longer than 100 years: leave --timeout out for no limit")
    return seconds


def _duration_given(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        _seconds(value)
        return value.strip()
    return None


def _timeout_here(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    from recipes.interrupts import Deadline, arm_deadline

    arm_deadline(Deadline(_seconds(value), value.strip()))


timeout_option = click.option(
    "--timeout",
    metavar="DURATION",
    expose_value=False,
    callback=_timeout_here,
    help="Give up after this long (6h, 90m): unwound like Ctrl-C (what was stopped is started "
    "again, and on those hosts what the run still runs is ended first), then exit 1.",
)


def pass_state(f: Any) -> Any:
    """Hands the command its State, and accepts ``--json`` after the command name too
    (``recipes snapshots --json`` as well as ``recipes --json snapshots``)."""
    f = click.option(
        "--json",
        "json_here",
        is_flag=True,
        expose_value=False,
        callback=_json_here,
        help="Machine-readable output (same as the global --json).",
    )(f)
    return _pass_state(f)


set_option = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe parameter (TOML value; dotted keys nest).",
)


@main.command("init")
@click.option(
    "--force",
    is_flag=True,
    help="Start over: new config, identity and signing key (the old ones kept as NAME.replaced-TIME).",
)
@click.option("--repo", metavar="URL", help="Repository URL to write into the config.")
@pass_state
def init_cmd(state: State, force: bool, repo: str | None) -> None:
    """Write a starter recipes.toml, an age identity and a signing key; else add what a config lacks."""
    from recipes import keys

    result = keys.init(state.config_path, repo, force)
    emit(state, result, keys.init_message(result))


@main.command("list")
@pass_state
def list_cmd(state: State) -> None:
    """Recipes and their parameters."""
    from recipes import apps
    from recipes.recipe import describe_params

    data = [
        {
            "name": r.name,
            "summary": r.summary,
            "parameters": [n for n, _, _ in describe_params(r())],
        }
        for r in apps.RECIPES
    ]
    text = "\n".join(
        f"{d['name']:<18} {d['summary']}\n{'':<18} parameters: {', '.join(d['parameters'])}" for d in data
    )
    emit(state, data, text)


@main.command("show")
@click.argument("recipe")
@pass_state
def show_cmd(state: State, recipe: str) -> None:
    """Paths, excludes, steps and defaults of a recipe."""
    from recipes import apps, plan
    from recipes.recipe import describe_params, make_params, params_dict

    r = apps.get(recipe)
    defaults = make_params(r, {}, f"recipe {recipe}")
    params = [{"name": n, "doc": d, "default": params_dict(defaults)[n]} for n, d, _ in describe_params(r)]
    # Plans need what has no default (deis: gateway): drawn with the recipe's example values.
    example = dict(getattr(r, "EXAMPLE_PARAMS", {}) or {})
    drawn = make_params(r, example, f"recipe {recipe}") if example else defaults
    backup = plan.backup_plan(r, drawn, "HOST")
    restore = plan.restore_plan(r, drawn, "HOST")
    data = {
        "name": r.name,
        "summary": r.summary,
        "seed": r.seed,
        "parameters": params,
        "backup": backup.to_dict()["steps"],
        "restore": restore.to_dict()["steps"],
    }
    options_class = plan.options_of(r)
    options = []
    if options_class is not None:
        import attrs

        for f in attrs.fields(options_class):
            options.append({"name": f.name, "doc": str(f.metadata.get("doc", "")), "default": f.default})
        data["restore_options"] = options
    lines = [f"{r.name}: {r.summary}", f"seed: {r.seed}", "", "parameters:"]
    for p in params:
        lines.append(f"  {p['name']} = {json.dumps(p['default'])}")
        lines.append(f"      {p['doc']}")
    if options:
        lines += ["", "restore options (recipes restore --set NAME=VALUE):"]
        for o in options:
            lines += [f"  {o['name']} = {json.dumps(o['default'])}", f"      {o['doc']}"]
    shown = ", ".join(f"{k}={v}" for k, v in example.items())
    lines += ["", f"with the defaults{f' and {shown}' if shown else ''}:", *backup.lines(), *restore.lines()]
    emit(state, data, "\n".join(lines))


def _prepare(state: State, recipe: str, host: str, sets: tuple[str, ...]) -> tuple[Any, Any, Any]:
    """Recipe, parameters and host, all checked."""
    from recipes import apps, config
    from recipes.recipe import make_params, reject_options

    cfg = state.config
    r = apps.get(recipe)
    values = config.recipe_values(cfg, recipe, sets)
    reject_options(r, values)
    where = f"{cfg.path or 'defaults'} [recipes.{recipe}] + --set"
    return r, make_params(r, values, where), cfg.host(host)


def _open_roles(state: State, recipe: Any, params: Any, main_name: str) -> dict[str, list[Any]]:
    """Hosts of the recipe's other roles (``nodes``...), each checked like ``--host`` and opened."""
    from recipes.hosts import open_host
    from recipes.recipe import roles_of

    bound: dict[str, list[Any]] = {}
    for role, names in roles_of(recipe, params).items():
        specs = [state.config.host(n) for n in names]
        for spec in specs:
            if spec.name == main_name:
                raise ConfigError(f"{role}: {spec.name} is the --host itself; list only the other hosts")
        bound[role] = [open_host(spec) for spec in specs]
    return bound


def _close_roles(bound: dict[str, list[Any]]) -> None:
    for hosts in bound.values():
        for h in hosts:
            h.close()


def _log_config(state: State) -> None:
    """One line saying which config file is in use, once the command line has been checked (so a
    usage error stays the only line)."""
    path = state.config.path
    if path:
        log.info("config %s", path)
    else:
        log.info("no config file: defaults")


@main.command("plan")
@click.argument("recipe")
@click.option("--host", required=True, help="Host alias, ~/.ssh/config name, user@addr:port or local.")
@set_option
@pass_state
def plan_cmd(state: State, recipe: str, host: str, sets: tuple[str, ...]) -> None:
    """Every command a backup would run; nothing is run."""
    from recipes import plan

    r, params, spec = _prepare(state, recipe, host, sets)
    p = plan.backup_plan(r, params, spec.name, state.config.compression(host))
    _log_config(state)
    emit(state, p.to_dict(), "\n".join(p.lines()))


def _repo(state: State, url: str | None) -> Any:
    from recipes.repository import Repository

    cfg = state.config
    return Repository(cfg.repository_url(url), dict(cfg.repository.options))


def _identities(state: State, identity: str | None, what: str) -> list[Any]:
    """The age identities from --identity or the config; one line naming ``what`` needs them."""
    from recipes import stream
    from recipes.errors import ConfigError

    path = state.config.existing_identity(identity)
    if path is None:
        raise ConfigError(
            f"{what} needs the age identity: pass --identity FILE or set [repository] identity_file "
            "in recipes.toml"
        )
    identities: list[Any] = stream.load_identities(path)
    return identities


def _one_snapshot(found: list[Any], damaged: list[str], snapshot: str, url: str) -> list[Any]:
    """The one listed snapshot whose id starts with ``snapshot`` (any recipe, any host: no
    "latest" here); ``DamagedSnapshot`` (exit 3) when it is one of ``damaged``."""
    from recipes.repository import choose

    return [choose(found, damaged, snapshot, f"in {url}", "recipes snapshots", latest=False)]


@main.command("run")
@timeout_option
@click.argument("recipe")
@click.option("--host", required=True, help="Host alias, ~/.ssh/config name, user@addr:port or local.")
@click.option("--repo", metavar="URL", help="Repository URL (overrides [repository] url).")
@set_option
@click.option("--full", is_flag=True, help="Start a new chain with a full backup.")
@pass_state
def run_cmd(
    state: State, recipe: str, host: str, repo: str | None, sets: tuple[str, ...], full: bool
) -> None:
    """Back up RECIPE from a host into the repository."""
    from recipes import plan
    from recipes.arenas import fewer_arenas
    from recipes.hosts import open_host
    from recipes.tarstate import PendingSession

    r, params, spec = _prepare(state, recipe, host, sets)
    p = plan.backup_plan(r, params, spec.name, state.config.compression(host))  # bad input: no connect
    fewer_arenas()  # before the threads below start, each of which would get an arena
    live = open_host(spec)
    live.connect_soon()  # the key exchange and login overlap the imports and opening the repository
    control = PendingSession(live)  # and so does the control session's start (facts only)
    roles: dict[str, Any] = {}
    try:
        from recipes import engine

        repository = _repo(state, repo)
        recipients = list(state.config.repository.recipients)
        engine.check_recipients(recipients)
        signer = state.config.signer()
        _log_config(state)
        roles = _open_roles(state, r, params, spec.name)
        with state.out.watching() as watcher:
            manifest = engine.backup(
                p,
                live,
                repository,
                recipients,
                full=full,
                chaining=state.config.chaining(),
                signer=signer,
                trust=state.config.trust(),
                deadman_seconds=state.config.engine.deadman_seconds,
                roles=roles,
                control=control,
            )
    finally:
        control.discard()
        live.close()
        _close_roles(roles)
    from recipes import output
    from recipes.manifest import _converter

    if not state.json:
        raw = watcher.raw_sizes() if isinstance(watcher, output.Bars) else {}
        state.out.print(output.run_table(manifest, raw, state.out.collected.warnings))
    kind = f"incremental level {manifest.level} on {manifest.parent}" if manifest.level else "full"
    text = (
        f"snapshot {manifest.snapshot} of {recipe}@{spec.name} ({kind}): {len(manifest.objects)} "
        f"objects, {human_size(manifest.size)} ({manifest.size} bytes) stored in {repository.url}"
    )
    emit(state, _converter.unstructure(manifest), text, report=True)


@main.command("snapshots")
@click.argument("recipe", required=False)
@click.option("--host", help="Only this host's snapshots.")
@click.option("--repo", metavar="URL", help="Repository URL (overrides [repository] url).")
@pass_state
def snapshots_cmd(state: State, recipe: str | None, host: str | None, repo: str | None) -> None:
    """Committed snapshots, oldest first, with whether their signature is trusted; damaged
    ones are listed as such."""
    from recipes import apps

    if recipe is not None:
        apps.get(recipe)  # an unknown recipe is a usage error listing the known ones, not "none"
    source = state.config.host(host).name if host is not None else None
    repository = _repo(state, repo)
    trust = state.config.trust(remember_for=repository.url)
    damaged: list[str] = []
    found = repository.listed(recipe, source, damaged)
    data = [
        {
            "snapshot": m.snapshot,
            "recipe": m.recipe,
            "host": m.host,
            "finished": m.finished,
            "level": m.level,
            "parent": m.parent,
            "size": m.size,
            "objects": [o.name for o in m.objects],
            "signed": item.signature is not None,
            "problem": trust.problem(item),
        }
        for item in found
        for m in [item.manifest]
    ]
    lines = [
        f"{d['snapshot']}  {d['recipe']:<10} {d['host']:<20} {d['finished']}  "
        f"{'full' if not d['level'] else 'incr ' + str(d['level']):<7} "
        f"{human_size(d['size']):>10}  {len(d['objects'])} objects"
        + (f"  UNTRUSTED: {d['problem']}" if d["problem"] else "")
        for d in data
    ]
    for entry in damaged:
        path, _, why = entry.partition(": ")
        snap = path.rsplit("/", 1)[-1]
        lines.append(f"{snap}  DAMAGED: {path}: {why}")
        data.append({"snapshot": snap, "damaged": why, "path": path})
    emit(state, data, "\n".join(lines) if lines else f"no snapshots in {repository.url}")


@main.command("prune")
@timeout_option
@click.argument("recipe", required=False)
@click.option("--host", help="Only this host's snapshots.")
@click.option("--repo", metavar="URL", help="Repository URL (overrides [repository] url).")
@click.option("--dry-run", is_flag=True, help="List what would be removed and why; change nothing.")
@pass_state
def prune_cmd(state: State, recipe: str | None, host: str | None, repo: str | None, dry_run: bool) -> None:
    """Apply [retention] to every recipe@host (or RECIPE, --host): remove the snapshots no rule
    keeps (never a parent of a kept one, never an unreadable or untrusted one) and the debris
    of killed runs, each recipe@host under its lock."""
    from recipes import apps
    from recipes import prune as pr
    from recipes.retention import Policy

    if recipe is not None:
        apps.get(recipe)  # an unknown recipe is a usage error listing the known ones
    source = state.config.host(host).name if host is not None else None
    repository = _repo(state, repo)
    policy = Policy.from_config(state.config.retention)
    reports = pr.prune(
        repository,
        state.config.trust(remember_for=repository.url),
        policy,
        recipe=recipe,
        host=source,
        dry_run=dry_run,
    )
    verb = "would remove" if dry_run else "removed"
    lines: list[str] = []
    for rep in reports:
        gone = rep.removed
        lines.append(
            f"{rep.recipe}@{rep.host} ({rep.policy}): {verb} {len(gone)} of {len(rep.entries)} "
            f"snapshots, {len(rep.debris)} debris"
        )
        lines += [
            f"  {verb} {e.snapshot}  {'full' if not e.level else 'incr ' + str(e.level):<7} {e.reason}"
            for e in gone
        ]
        lines += [f"  {e.snapshot}  {e.reason}" for e in rep.entries if e.reason.startswith("left alone")]
        lines += [f"  {d}" for d in rep.damaged]
        lines += [f"  {verb} debris {d} (no manifest, older than a day: a killed run)" for d in rep.debris]
    text = "\n".join(lines) if lines else f"no snapshots in {repository.url}"
    emit(state, [rep.to_dict() for rep in reports], text, report=True)


@main.command("restore")
@timeout_option
@click.argument("recipe")
@click.option("--host", required=True, help="The host to restore onto.")
@click.option(
    "--snapshot",
    default="latest",
    show_default=True,
    help="Snapshot id (or unique prefix), or latest.",
)
@click.option(
    "--from",
    "from_host",
    metavar="HOST",
    help="Take the latest snapshot of this host (default: --host itself).",
)
@click.option("--repo", metavar="URL", help="Repository URL (overrides [repository] url).")
@click.option("--identity", metavar="FILE", help="age identity file (the secret key).")
@set_option
@click.option("--force", is_flag=True, help="Restore over a non-empty target.")
@click.option("--plan", "plan_only", is_flag=True, help="Print the restore plan; run nothing.")
@click.option(
    "--allow-unsigned",
    is_flag=True,
    help="Trust snapshots without a signature (made before signatures existed); warns.",
)
@pass_state
def restore_cmd(
    state: State,
    recipe: str,
    host: str,
    snapshot: str,
    from_host: str | None,
    repo: str | None,
    identity: str | None,
    sets: tuple[str, ...],
    force: bool,
    plan_only: bool,
    allow_unsigned: bool,
) -> None:
    """Restore a snapshot of RECIPE onto a host.

    What the snapshot holds (paths, excludes, dumped files) comes from its signed manifest;
    where it goes (root, database connections) from the target's config and --set.
    """
    from recipes import apps, config, engine, plan
    from recipes.hosts import open_host
    from recipes.recipe import make_params, restore_values, split_options

    cfg = state.config
    r = apps.get(recipe)
    spec = cfg.host(host)
    if from_host is not None and not from_host.strip():  # a script's empty variable, say
        raise ConfigError("restore --from: an empty host name; give the host whose snapshot to take")
    if getattr(r, "external_restore", False):
        if from_host or repo or identity or allow_unsigned:
            raise ConfigError(
                f"{recipe} restores from its duplicity collection (parameter source), not from the "
                "repository: --from, --repo, --identity and --allow-unsigned do not apply"
            )
        _restore_external(state, r, spec, host, snapshot, sets, force, plan_only)
        return
    given = f"{cfg.path or 'defaults'} [recipes.{recipe}] + --set"
    target, options = split_options(r, config.recipe_values(cfg, recipe, sets), given)
    make_params(r, target, given)  # bad input first
    identities: list[Any] = []
    if not plan_only:  # a bad key file fails before any lookup
        identities = _identities(state, identity, "restore")
    repository = _repo(state, repo)
    trust = cfg.trust(allow_unsigned)
    if snapshot != "latest" and not from_host:
        item = repository.find_listed(recipe, None, snapshot)
    else:
        source = cfg.host(from_host).name if from_host else spec.name
        item = repository.find_listed(recipe, source, snapshot)
    manifest = trust.check(item)
    values, ignored = restore_values(r, target, manifest.params)
    for name in ignored:
        logging.getLogger("recipes").warning(
            "%s comes from snapshot %s (what it holds); the target's value is ignored",
            name,
            manifest.snapshot,
        )
    where = f"{cfg.path or 'defaults'} [recipes.{recipe}] + --set + snapshot {manifest.snapshot}"
    params = make_params(r, values, where)
    p = plan.restore_plan(r, params, spec.name, cfg.compression(host), options)
    _log_config(state)
    if plan_only:
        emit(state, {**p.to_dict(), "snapshot": manifest.snapshot}, "\n".join(p.lines()))
        return
    roles = _open_roles(state, r, params, spec.name)
    live = open_host(spec)
    try:
        with state.out.watching():
            records = engine.restore(
                p,
                live,
                repository,
                manifest,
                identities,
                force,
                trust=trust,
                roles=roles,
                deadman_seconds=cfg.engine.deadman_seconds,
            )
    finally:
        live.close()
        _close_roles(roles)
    if not state.json:
        from recipes import output

        warned = state.out.collected.warnings
        state.out.print(output.restore_table(manifest.snapshot, spec.name, records, warned))
    data = {
        "snapshot": manifest.snapshot,
        "host": spec.name,
        "steps": [{"name": s.name, "kind": s.kind, "seconds": s.seconds} for s in records],
    }
    emit(
        state,
        data,
        f"restored snapshot {manifest.snapshot} ({manifest.host}) onto {spec.name}: "
        f"{len(records)} steps in {sum(s.seconds for s in records):.1f}s",
        report=True,
    )


def _restore_external(
    state: State,
    r: Any,
    spec: Any,
    host: str,
    snapshot: str,
    sets: tuple[str, ...],
    force: bool,
    plan_only: bool,
) -> None:
    """Restore a recipe whose source is not our repository (GOV.UK's duplicity collections):
    parameters from the config and --set only (no manifest); ``--snapshot TIME`` is the
    source's own time (duplicity --time), ``latest`` its newest backup set."""
    import attrs

    from recipes import config, plan
    from recipes import restore as restoring
    from recipes.hosts import open_host
    from recipes.recipe import make_params, split_options

    cfg = state.config
    given = f"{cfg.path or 'defaults'} [recipes.{r.name}] + --set"
    target, options = split_options(r, config.recipe_values(cfg, r.name, sets), given)
    if options is None:
        options = plan.options_of(r)()  # type: ignore[misc]
    if snapshot != "latest":
        options = attrs.evolve(options, time=snapshot)
    params = make_params(r, target, given)
    p = plan.restore_plan(r, params, spec.name, cfg.compression(host), options)
    _log_config(state)
    if plan_only:
        emit(state, {**p.to_dict(), "snapshot": snapshot}, "\n".join(p.lines()))
        return
    roles = _open_roles(state, r, params, spec.name)
    live = open_host(spec)
    try:
        with state.out.watching():
            records = restoring.restore_external(
                p, live, force, roles=roles, deadman_seconds=cfg.engine.deadman_seconds
            )
    finally:
        live.close()
        _close_roles(roles)
    label = f"{params.source} ({snapshot})"
    if not state.json:
        from recipes import output

        state.out.print(output.restore_table(label, spec.name, records, state.out.collected.warnings))
    data = {
        "source": params.source,
        "snapshot": snapshot,
        "host": spec.name,
        "steps": [
            {"name": s.name, "kind": s.kind, "seconds": s.seconds, "outcome": s.outcome} for s in records
        ],
    }
    emit(
        state,
        data,
        f"restored {r.name} from {label} onto {spec.name}: "
        f"{len(records)} steps in {sum(s.seconds for s in records):.1f}s",
        report=True,
    )


@main.command("verify")
@timeout_option
@click.argument("snapshot", required=False)
@click.option("--all", "every", is_flag=True, help="Verify every snapshot in the repository.")
@click.option("--repo", metavar="URL", help="Repository URL (overrides [repository] url).")
@click.option("--deep", is_flag=True, help="Also decrypt, decompress, list archives, check dumps.")
@click.option("--identity", metavar="FILE", help="age identity file (for --deep).")
@click.option("--allow-unsigned", is_flag=True, help="Trust snapshots without a signature; warns.")
@pass_state
def verify_cmd(
    state: State,
    snapshot: str | None,
    every: bool,
    repo: str | None,
    deep: bool,
    identity: str | None,
    allow_unsigned: bool,
) -> None:
    """Check snapshots without restoring: signatures, chains, sizes and sha256 of every object
    (no secret key needed); --deep also reads every object through (needs the identity).

    Exit 3 naming the snapshot and object when anything does not match.
    """
    from recipes import verify
    from recipes.errors import ConfigError, VerifyError

    if bool(snapshot) == every:
        raise ConfigError("verify: give one SNAPSHOT (id or unique prefix) or --all")
    cfg = state.config
    identities: list[Any] = []
    if deep:
        identities = _identities(state, identity, "verify --deep")
    repository = _repo(state, repo)
    trust = cfg.trust(allow_unsigned)
    _log_config(state)
    _settled()
    damaged: list[str] = []
    found = repository.listed(None, None, damaged)
    if snapshot:
        from recipes.repository import DamagedSnapshot

        try:
            found, damaged = _one_snapshot(found, damaged, snapshot, repository.url), []
        except DamagedSnapshot as exc:  # reported as `verify --all` reports it
            found, damaged = [], [exc.entry]
    identity_file = cfg.identity_path(identity) if deep else None
    reports = [
        verify.verify(repository, item, trust, deep=deep, identities=identities, identity_file=identity_file)
        for item in found
    ]
    _settled()
    problems = [p.line() for r in reports for p in r.problems] + [f"{d} (damaged manifest)" for d in damaged]
    data = {
        "ok": not problems,
        "deep": deep,
        "snapshots": [
            {
                "recipe": r.recipe,
                "host": r.host,
                "snapshot": r.snapshot,
                "objects": r.objects,
                "bytes": r.bytes,
                "problems": [{"object": p.object, "reason": p.reason} for p in r.problems],
            }
            for r in reports
        ],
        "damaged": damaged,
    }
    lines = [
        f"{'ok    ' if r.ok else 'FAILED'} {r.recipe}@{r.host} {r.snapshot}: {r.objects} objects, "
        f"{human_size(r.bytes)}" + ("" if r.ok else "; " + "; ".join(p.line() for p in r.problems))
        for r in reports
    ] + [f"FAILED {d} (damaged manifest)" for d in damaged]
    emit(state, data, "\n".join(lines) if lines else f"no snapshots in {repository.url}")
    if problems:
        more = f" (and {len(problems) - 1} more problems: see above)" if len(problems) > 1 else ""
        raise VerifyError(problems[0] + more)


def _settled() -> None:
    """What is alive now lives until the process ends (the S3 client's models are big): keep it
    out of the cyclic collector's passes, while running and at exit (0.1 s of teardown saved)."""
    import gc

    gc.freeze()


@main.command("copy")
@timeout_option
@click.argument("snapshot", required=False)
@click.option("--to", "to_url", required=True, metavar="URL", help="Destination repository URL.")
@click.option("--all", "every", is_flag=True, help="Copy every snapshot.")
@click.option("--repo", metavar="URL", help="Source repository URL (overrides [repository] url).")
@pass_state
def copy_cmd(state: State, snapshot: str | None, to_url: str, every: bool, repo: str | None) -> None:
    """Copy snapshots with the chains they need to another repository (an offline disk): each
    object verified as it arrives, the signed manifest written last; present ones are skipped."""
    from recipes import copying
    from recipes.errors import ConfigError
    from recipes.repository import Repository

    if bool(snapshot) == every:
        raise ConfigError("copy: give one SNAPSHOT (id or unique prefix) or --all")
    cfg = state.config
    source = _repo(state, repo)
    if not to_url.strip():
        raise ConfigError("copy --to: give the destination repository URL")
    dest_url = to_url if "://" in to_url else os.path.abspath(os.path.expanduser(to_url))
    # s3:// destinations take the configured endpoint options; a local folder needs none
    options = dict(cfg.repository.options) if dest_url.startswith("s3://") else {}
    dest = Repository(dest_url, options)
    trust = cfg.trust()
    _log_config(state)
    damaged: list[str] = []
    found = source.listed(None, None, damaged)
    if snapshot:
        found = _one_snapshot(found, damaged, snapshot, source.url)
    done = [copying.copy(source, dest, item, trust) for item in copying.with_chains(source, found, trust)]
    data = [
        {"recipe": c.recipe, "host": c.host, "snapshot": c.snapshot, "outcome": c.outcome, "bytes": c.bytes}
        for c in done
    ]
    lines = [f"{c.outcome:<7} {c.recipe}@{c.host} {c.snapshot} ({human_size(c.bytes)})" for c in done]
    emit(state, data, "\n".join(lines) if lines else f"no snapshots in {source.url}", report=True)


class _Amount(click.FloatRange):
    """A price or a count: a finite number >= 0 (``nan`` and ``inf`` would make the estimate
    meaningless, and ``NaN`` is not JSON)."""

    name = "amount"

    def __init__(self) -> None:
        super().__init__(min=0)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


_AMOUNT = _Amount()


@main.command("estimate")
@click.argument("recipe")
@click.option("--host", required=True, help="Host alias, ~/.ssh/config name, user@addr:port or local.")
@set_option
@click.option("--repo", metavar="URL", help="Repository URL (dump sizes from its latest snapshot).")
@click.option("--price-gb-month", type=_AMOUNT, default=0.005, show_default=True)
@click.option("--price-gb-download", type=_AMOUNT, default=0.05, show_default=True)
@click.option("--downloads-per-year", type=_AMOUNT, default=2.0, show_default=True)
@pass_state
def estimate_cmd(
    state: State,
    recipe: str,
    host: str,
    sets: tuple[str, ...],
    repo: str | None,
    price_gb_month: float,
    price_gb_download: float,
    downloads_per_year: float,
) -> None:
    """What RECIPE on a host would store under the configured retention, and its yearly cost
    (seed 002's model: storage per GB-month, plus test downloads). Reads the host, writes nothing."""
    import attrs

    from recipes import estimate, plan
    from recipes.hosts import open_host

    r, params, spec = _prepare(state, recipe, host, sets)
    cfg = state.config
    p = plan.backup_plan(r, params, spec.name, cfg.compression(host))
    repository = _repo(state, repo)
    trust = cfg.trust()
    trusted = [i.manifest for i in repository.listed(recipe, spec.name) if trust.problem(i) is None]
    kept = estimate.copies(cfg.retention.max_age, cfg.retention.full_every)
    prices = estimate.Prices(price_gb_month, price_gb_download, downloads_per_year)
    _log_config(state)
    live = open_host(spec)
    try:
        e = estimate.measure(live, p, trusted[-1] if trusted else None, kept, prices)
    finally:
        live.close()
    gb = e.per_full / estimate.GB
    data = {
        "recipe": recipe,
        "host": spec.name,
        "files_bytes": e.raw,
        "zstd_ratio": round(e.ratio, 4),
        "sample_bytes": e.sampled,
        "dumps_bytes": e.dumps,
        "per_full_bytes": e.per_full,
        "fulls_kept": e.copies,
        "stored_bytes": e.stored,
        "cost_per_year": round(e.cost, 2),
        "prices": attrs.asdict(prices),
    }
    dumps = (
        f"{human_size(e.dumps)} (from snapshot {trusted[-1].snapshot})"
        if trusted
        else "not measured: no snapshot yet (run a backup once)"
    )
    text = "\n".join(
        [
            f"estimate {recipe} on {spec.name}",
            f"  files: {human_size(e.raw)} (excludes applied); zstd -1 on a {human_size(e.sampled)} sample: "
            f"{e.ratio:.0%}",
            f"  dumps: {dumps}",
            f"  one full: about {human_size(e.per_full)}; retention keeps {e.copies} fulls "
            f"(max_age {cfg.retention.max_age} / full_every {cfg.retention.full_every}): "
            f"{human_size(e.stored)} stored (incrementals not counted)",
            f"  cost per year: ${e.cost:.2f} = {gb:.3f} GB x {e.copies} x ${prices.gb_month}/GB-month x 12"
            f" + {prices.downloads_per_year:g} downloads x {gb:.3f} GB x ${prices.gb_download}/GB",
        ]
    )
    emit(state, data, text)


@main.command("runbook")
@click.argument("recipe")
@click.option("--host", required=True, help="The host the runbook restores (as --host takes it).")
@click.option("--snapshot", metavar="ID|latest", help="Fill in this snapshot's objects (verified first).")
@click.option("--repo", metavar="URL", help="Repository URL (overrides [repository] url).")
@click.option("--format", "fmt", type=click.Choice(["md", "html"]), default="md", show_default=True)
@click.option(
    "-o", "--output", "output", metavar="FILE", help="Write to FILE (atomically) instead of stdout."
)
@set_option
@pass_state
def runbook_cmd(
    state: State,
    recipe: str,
    host: str,
    snapshot: str | None,
    repo: str | None,
    fmt: str,
    output: str | None,
    sets: tuple[str, ...],
) -> None:
    """A restore runbook for RECIPE on a host (Markdown or printable HTML), rendered from the
    steps `recipes restore` runs; --snapshot fills in that snapshot's objects and checksums."""
    from recipes import drill, runbook

    def last_drill(repository: Any, name: str, on: str) -> dict[str, Any] | None:
        """The newest drill record signed by one of this configuration's signers."""
        return drill.last(repository, name, on, trust=state.config.trust())

    text = runbook.for_config(
        state.config, recipe, host, snapshot=snapshot, repo=repo, fmt=fmt, last_drill=last_drill, sets=sets
    )
    _log_config(state)
    if output is None and state.json:  # the runbook itself, inside the JSON document
        emit(state, {"recipe": recipe, "host": host, "format": fmt, "file": None, "text": text}, text)
        return
    if output is None:
        click.echo(text, nl=False)
        return
    runbook.write_atomic(output, text)
    emit(state, {"recipe": recipe, "host": host, "format": fmt, "file": output}, f"wrote {output}")


@main.command("schedule")
@click.argument("recipe")
@click.option("--host", required=True, help="Host alias, ~/.ssh/config name, user@addr:port or local.")
@click.option("--at", default="daily", show_default=True, help="daily, hourly, weekly, HH:MM or OnCalendar.")
@click.option("--format", "fmt", type=click.Choice(["systemd", "cron"]), default="systemd", show_default=True)
@click.option("--verify/--no-verify", default=True, show_default=True, help="Also a weekly verify --all.")
@click.option(
    "--env-file",
    default="/etc/recipes/env",
    show_default=True,
    help="KEY=value file (0600) with the password_env variables and AWS credentials, if any.",
)
@click.option("-o", "--output", "out_dir", metavar="DIR", help="Write the files into DIR.")
@click.option("--install", is_flag=True, help="Write into /etc/systemd/system or /etc/cron.d and enable.")
@click.option(
    "--timeout",
    "limit",
    metavar="DURATION",
    callback=_duration_given,
    help="Pass --timeout DURATION to each job (20h): a job that hangs fails and mails.",
)
@pass_state
def schedule_cmd(
    state: State,
    recipe: str,
    host: str,
    at: str,
    fmt: str,
    verify: bool,
    env_file: str,
    out_dir: str | None,
    install: bool,
    limit: str | None,
) -> None:
    """A systemd service+timer (or a cron file) that prunes, then backs up RECIPE every night,
    quiet unless something fails; --install puts it in place and enables it."""
    import subprocess
    from pathlib import Path

    from recipes import schedule
    from recipes.errors import ConfigError, StepFailed

    _r, _params, spec = _prepare(state, recipe, host, ())  # a schedule of a broken recipe: refuse now
    config = state.config.path
    files = schedule.generate(
        recipe, spec.name, config=config, at=at, fmt=fmt, verify=verify, env_file=env_file, timeout=limit
    )
    if fmt == "systemd" and not schedule.is_simple(at):
        try:
            check = subprocess.run(["systemd-analyze", "calendar", at], capture_output=True, text=True)
        except OSError as exc:  # a controller without systemd: the expression cannot be checked
            raise ConfigError(
                f"schedule --at {at!r}: cannot check this calendar expression ({exc.strerror or exc}: "
                "systemd-analyze); give HH:MM, hourly, daily or weekly, or run this where systemd is"
            ) from None
        if check.returncode != 0:
            raise ConfigError(
                f"schedule --at {at!r}: not a systemd calendar expression ({check.stderr.strip()})"
            )
    target = schedule.SYSTEMD_DIR if fmt == "systemd" else schedule.CRON_DIR
    where = out_dir or (target if install else None)
    if where is not None:
        folder = Path(where)
        path = folder
        try:  # an operational failure (exit 1), not a usage error: the same command may work later
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in files.files.items():
                path = folder / name
                path.write_text(text)
                path.chmod(0o644)
        except OSError as exc:
            raise StepFailed(
                f"cannot write the schedule to {exc.filename or path}: {exc.strerror or exc} "
                "(make the folder writable, or give another -o DIR)"
            ) from None
    if install and fmt == "systemd":
        timers = [n for n in files.files if n.endswith(".timer")]
        finish = f"systemctl daemon-reload && systemctl enable --now {' '.join(timers)}"
        for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", *timers]):
            try:
                done = subprocess.run(argv, capture_output=True, text=True)
            except OSError as exc:  # a controller without systemd
                raise StepFailed(
                    f"cannot run {argv[0]} ({exc.strerror or exc}): the units are written in {where} "
                    f"but not enabled; where systemd runs, run `{finish}`, or use --format cron"
                ) from None
            if done.returncode != 0:
                raise StepFailed(
                    f"{' '.join(argv)} failed ({done.stderr.strip() or f'exit {done.returncode}'}): the "
                    f"units are written in {where} but not enabled; fix that and run `{finish}`"
                )
    data = {"format": files.format, "directory": where, "files": files.files}
    if where is None:
        text = "\n".join(f"# ---- {name}\n{body}" for name, body in files.files.items())
    else:
        text = "\n".join(f"wrote {Path(where) / name}" for name in files.files)
    emit(state, data, text.rstrip("\n"))


# ---- drills (issue 12): a restore onto a scratch host, proved and recorded


@main.command("drill")
@timeout_option
@click.argument("recipe")
@click.option("--host", required=True, help="The source host whose snapshot is drilled (never written to).")
@click.option("--to-host", "to_host", required=True, help="The scratch host to restore onto.")
@click.option(
    "--snapshot", default="latest", show_default=True, help="Snapshot id (or unique prefix), or latest."
)
@set_option
@click.option("--repo", metavar="URL", help="Repository URL (overrides [repository] url).")
@click.option("--identity", metavar="FILE", help="age identity file (the secret key).")
@click.option("--force", is_flag=True, help="Restore over a scratch host that is not empty.")
@pass_state
def drill_cmd(
    state: State,
    recipe: str,
    host: str,
    to_host: str,
    snapshot: str,
    sets: tuple[str, ...],
    repo: str | None,
    identity: str | None,
    force: bool,
) -> None:
    """Restore RECIPE's snapshot of --host onto --to-host, check it against the facts recorded at
    backup time and the recipe's health checks, time it (RTO), and keep a signed record in the
    repository (drills/...). Exit 3 naming the failed checks; 2 when the scratch host, or a
    database or bucket it would write, is the source's."""
    from recipes import drill

    _log_config(state)
    with state.out.watching():
        record = drill.run(
            state.config,
            recipe,
            host,
            to_host,
            snapshot=snapshot,
            sets=sets,
            repo_url=repo,
            identity=identity,
            force=force,
        )
    lines = [
        f"drill of {recipe}@{record['host']} ({record['snapshot']}) onto {record['scratch']}: passed, "
        f"RTO {record['rto_seconds']:.1f}s"
    ]
    lines += [f"  {s['seconds']:8.1f}s  {s['name']}" for s in record["steps"]]
    lines += [
        f"  {'skipped' if 'skipped' in c else 'ok':<7}  {c['name']}: {c['found']}" for c in record["checks"]
    ]
    emit(state, record, "\n".join(lines), report=True)


@main.command("drills")
@click.argument("recipe", required=False)
@click.option("--host", help="Only the drills of this source host.")
@click.option("--repo", metavar="URL", help="Repository URL (overrides [repository] url).")
@pass_state
def drills_cmd(state: State, recipe: str | None, host: str | None, repo: str | None) -> None:
    """Drill records, oldest first, with whether their signature (namespace recipes-drill) is
    trusted; an unverified record is listed as such, never as a result."""
    from recipes import apps, drill

    if recipe is not None:
        apps.get(recipe)
    source = state.config.host(host).name if host is not None else None
    repository = _repo(state, repo)
    found = drill.listing(repository, recipe, source, state.config.trust())
    data = []
    lines = []
    for entry in found:
        rec = entry["record"] or {}
        data.append(
            {**rec, "path": entry["path"], "verified": entry["verified"], "problem": entry["problem"]}
        )
        if entry["verified"]:
            bad = [c["name"] for c in rec.get("checks", []) if not c["ok"]]
            lines.append(
                f"{rec['started']}  {rec['recipe']:<10} {rec['host']} -> {rec['scratch']}  "
                f"{'passed' if rec['passed'] else 'FAILED ' + ', '.join(bad)}  "
                f"RTO {rec['rto_seconds']:.1f}s  snapshot {rec['snapshot']}"
            )
        else:
            lines.append(f"UNVERIFIED {entry['path']}: {entry['problem']}")
    emit(state, data, "\n".join(lines) if lines else f"no drills in {repository.url}")
