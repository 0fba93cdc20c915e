"""``recipes copy``: snapshots and their chains into another repository (seed 002's monthly copy
to an offline disk), each object verified as it arrives, each manifest last and as signed.

A snapshot is copied only if it is trusted here (signed by a configured signer, chain complete);
at the destination it becomes visible when its manifest is written, after every object arrived
with the sha256 the manifest records, so an interrupted copy leaves nothing listed. A snapshot
already at the destination with the same signed manifest and verified objects is skipped.
"""

from __future__ import annotations

import hashlib
import logging

import attrs

from recipes import chain
from recipes import manifest as mf
from recipes.errors import RecipeError, VerifyError
from recipes.repository import Listed, Repository
from recipes.trust import Trust

log = logging.getLogger("recipes")
CHUNK = 4 << 20


@attrs.frozen
class Copied:
    """What happened to one snapshot: ``copied`` or ``skipped`` (already there and verified)."""

    recipe: str
    host: str
    snapshot: str
    outcome: str
    bytes: int


def with_chains(src: Repository, items: list[Listed], trust: Trust) -> list[Listed]:
    """The snapshots asked for plus every parent they need, oldest first, each trusted here
    (VerifyError naming the first that is not)."""
    wanted: dict[tuple[str, str, str], Listed] = {}
    for item in items:
        m = trust.check(item)
        fetched: dict[str, Listed] = {}

        def fetch(sid: str, m: mf.Manifest = m, fetched: dict[str, Listed] = fetched) -> Listed | None:
            found = src.load_listed(m.recipe, m.host, sid)
            if found is not None:
                fetched[sid] = found
            return found

        for parent in chain.resolve(m, trust.lookup(fetch)):
            key = (parent.recipe, parent.host, parent.snapshot)
            wanted[key] = item if parent.snapshot == m.snapshot else fetched[parent.snapshot]
    return [wanted[k] for k in sorted(wanted, key=lambda k: k[2])]


def copy(src: Repository, dst: Repository, item: Listed) -> Copied:
    """Copy one (trusted) snapshot; objects verified on arrival, manifest and signature last."""
    m = item.manifest
    if _already_there(dst, item):
        log.info("%s@%s %s is already at %s: skipped", m.recipe, m.host, m.snapshot, dst.url)
        return Copied(m.recipe, m.host, m.snapshot, "skipped", 0)
    writer = dst.writer_for(m)
    total = 0
    try:
        for obj in m.objects:
            h = hashlib.sha256()
            size = 0
            with src.open_object(m, obj) as fh, writer.open(obj.path) as out:
                while chunk := fh.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            if size != obj.size or h.hexdigest() != obj.sha256:
                raise VerifyError(
                    f"{obj.path} of snapshot {m.snapshot} does not match its manifest as read from "
                    f"{src.url} (size {size}, sha256 differs or not): nothing of it is listed at {dst.url}"
                )
            dst.verify_objects(m, [obj])  # as it arrived
            total += size
        writer.commit_raw(item.raw, item.signature)
    except BaseException:
        writer.abort()
        raise
    log.info("copied %s@%s %s: %d bytes", m.recipe, m.host, m.snapshot, total)
    return Copied(m.recipe, m.host, m.snapshot, "copied", total)


def _already_there(dst: Repository, item: Listed) -> bool:
    m = item.manifest
    there = dst.load_listed(m.recipe, m.host, m.snapshot)
    if there is None or there.raw != item.raw or there.signature != item.signature:
        return False
    try:
        dst.verify_objects(m, list(m.objects))
    except RecipeError as exc:
        log.warning("%s at %s does not verify (%s): copying it again", m.snapshot, dst.url, exc)
        return False
    return True
