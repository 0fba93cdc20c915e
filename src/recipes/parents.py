"""Full or incremental, and finding the parent's tar state: the cache, else the repository with
an identity. ``chain`` decides on manifests alone; this module reads the cache and the repository."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import attrs

from recipes import chain, stream
from recipes import manifest as mf
from recipes.errors import RecipeError
from recipes.ops import HostCommand, Transfer
from recipes.plan import Plan
from recipes.repository import Repository
from recipes.tarstate import StateCache
from recipes.trust import Trust

# duply's MAX_FULLBKP_AGE default in recipes.toml: a new full every three months.
DEFAULT_FULL_EVERY = chain.parse_duration("3M")


@attrs.frozen
class Chaining:
    """How backups chain: when a new full starts, where tar states are cached, and the identity
    (optional) that may read a parent's state from the repository when the cache lacks it."""

    full_every: dt.timedelta = DEFAULT_FULL_EVERY
    cache_dir: Path | None = None
    identity_file: str | None = None


def other_machine(parent: mf.Manifest, versions: dict[str, str]) -> bool:
    """True when both snapshots know their host's id and the ids differ (a host name re-pointed
    to another machine, a reinstall): tar's times and inodes from the parent mean nothing there."""
    before, now = parent.versions.get("host-id"), versions.get("host-id")
    return bool(before and now and before != now)


def decide(
    plan: Plan,
    repo: Repository,
    recipients: list[str],
    full: bool,
    chaining: Chaining,
    cache: StateCache,
    trust: Trust,
) -> tuple[chain.Decision, dict[str, Path]]:
    """Full or incremental, and the parent's tar states (plain files on the controller).

    Only a chain whose every manifest ``trust`` believes can carry an incremental: an unsigned
    or badly signed parent means a full, said in the log.
    """
    states = [
        op.src.state
        for op in plan.ops()
        if isinstance(op, Transfer) and isinstance(op.src, HostCommand) and op.src.state
    ]
    listed = [] if full or not states else repo.listed(plan.recipe, plan.host)
    previous = [item.manifest for item in listed]
    if listed and (problem := trust.problem(listed[-1])) is not None:
        return chain.Decision(0, None, f"full: the latest snapshot {previous[-1].snapshot}: {problem}"), {}
    decision = chain.choose(
        previous,
        params=plan.chain_params,
        recipients=recipients,
        states=states,
        full_every=chaining.full_every,
        now=dt.datetime.now(dt.UTC),
        force_full=full,
    )
    if decision.parent is None:
        return attrs.evolve(decision, previous=tuple(previous)), {}
    parent = decision.parent
    by_id = {item.manifest.snapshot: item for item in listed}
    try:
        chain.resolve(parent, trust.lookup(by_id.get))
    except (RecipeError, ValueError) as exc:
        return chain.Decision(0, None, f"full: the chain of {parent.snapshot} cannot be trusted: {exc}"), {}
    found: dict[str, Path] = {}
    for name in states:
        path = cache.get(parent, name) or _state_from_repository(repo, parent, name, chaining, cache)
        if isinstance(path, str):
            reason = (
                f"full: the tar state of {parent.snapshot} is not in this controller's cache "
                f"({cache.root}) and {path}"
            )
            return chain.Decision(0, None, reason), {}
        found[name] = path
    return decision, found


def _state_from_repository(
    repo: Repository, parent: mf.Manifest, name: str, chaining: Chaining, cache: StateCache
) -> Path | str:
    """Decrypt the parent's state into the cache with the configured identity; else why not."""
    if not chaining.identity_file:
        return "no identity file is configured to read it from the repository"
    try:
        identities = stream.load_identities(chaining.identity_file)
    except OSError as exc:
        return f"the identity file {chaining.identity_file} cannot be read ({exc.strerror})"
    if not identities:
        return f"the identity file {chaining.identity_file} holds no age identity"
    try:
        return cache.fetch(repo, parent, name, identities)
    except (RecipeError, OSError) as exc:
        return f"reading it from the repository failed ({exc})"
