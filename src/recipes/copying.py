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
from typing import Any

import attrs

from recipes import chain
from recipes import manifest as mf
from recipes.errors import RepositoryError, VerifyError
from recipes.repository import MANIFEST, SIGNATURE, Listed, Repository, safe_name
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


def copy(src: Repository, dst: Repository, item: Listed, trust: Trust | None = None) -> Copied:
    """Copy one (trusted) snapshot; objects verified on arrival, manifest and signature last.

    A destination that holds another snapshot under this id (a different manifest that
    ``trust`` believes) is refused before anything is written there. One that holds this
    snapshot with damaged objects, or a manifest that does not verify, is *repaired*: unlisted
    first (its manifest goes), then only the objects that do not verify are copied again. A
    repair never removes what was there: if it fails, the objects that verify stay and the old
    manifest (when it was this one) is put back, so the destination is as it was or better.
    """
    m = item.manifest
    there = dst.load_listed(m.recipe, m.host, m.snapshot)
    if there is not None and there.raw != item.raw:
        if trust is None or trust.problem(there) is None:
            place = f"{dst.url}/{safe_name(m.recipe)}/{safe_name(m.host)}/{m.snapshot}"
            raise RepositoryError(
                f"{place} already holds a different snapshot {m.snapshot} of {m.recipe}@{m.host} "
                f"(its manifest differs from the one in {src.url}): nothing was written there; move "
                "that folder away (or copy to another repository) and copy again"
            )
        log.warning("%s at %s has a manifest that does not verify: copying it again", m.snapshot, dst.url)
    # A folder already there (listed, or left unlisted by a failed repair, or with a manifest that
    # cannot be read) is repaired in place: nothing of it is ever removed by this copy.
    held = there is not None or dst.fs.exists(dst._path(safe_name(m.recipe), safe_name(m.host), m.snapshot))
    good = _verified_there(dst, item) if held else set()
    same = there is not None and there.raw == item.raw and there.signature == item.signature
    if same and len(good) == len(m.objects):
        log.info("%s@%s %s is already at %s: skipped", m.recipe, m.host, m.snapshot, dst.url)
        return Copied(m.recipe, m.host, m.snapshot, "skipped", 0)
    writer = dst.writer_for(m)
    total = 0
    try:
        if there is not None:  # nothing is rewritten under a listed manifest
            _unlist(dst, writer.path)
        for obj in m.objects:
            if obj.path in good:
                continue
            total += _copy_object(src, dst, m, obj, writer)
            good.add(obj.path)
        writer.commit_raw(item.raw, item.signature)
    except BaseException:
        if not held:
            writer.abort()
        else:
            _repair_failed(dst, writer, there if there is not None and there.raw == item.raw else None)
        raise
    log.info("copied %s@%s %s: %d bytes", m.recipe, m.host, m.snapshot, total)
    return Copied(m.recipe, m.host, m.snapshot, "copied", total)


def _copy_object(src: Repository, dst: Repository, m: mf.Manifest, obj: mf.StoredObject, writer: Any) -> int:
    """One object from ``src`` into the snapshot ``writer`` writes, checked as read and as it
    arrived; its size."""
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
    return size


def _repair_failed(dst: Repository, writer: Any, old: Listed | None) -> None:
    """A repair cut short: keep every object (those that verify are good), put the old manifest
    back when it was this snapshot's (listed as before, with fewer damaged objects), else leave
    it unlisted. Best effort: the failure itself is what is raised."""
    m = writer.snapshot
    if old is None:
        log.warning("%s at %s stays unlisted: copy it again to finish the repair", m, dst.url)
        return
    try:
        writer.commit_raw(old.raw, old.signature)
    except Exception as exc:  # the repair's own failure is what is raised (an interrupt: itself)
        log.warning(
            "%s at %s stays unlisted (putting its manifest back failed: %s): copy it again to finish "
            "the repair",
            m,
            dst.url,
            exc,
        )
    else:
        log.warning("%s at %s is listed as before the repair: copy it again to finish it", m, dst.url)


def _verified_there(dst: Repository, item: Listed) -> set[str]:
    """The objects of ``item`` the destination already holds as its manifest says (a warning
    for each that does not verify: it is copied again)."""
    m = item.manifest
    good: set[str] = set()
    for obj in m.objects:
        try:
            dst.verify_objects(m, [obj])
        except VerifyError as exc:  # a storage failure is raised: it says nothing of the object
            log.warning("%s at %s does not verify (%s): copying it again", m.snapshot, dst.url, exc)
        else:
            good.add(obj.path)
    return good


def _unlist(dst: Repository, path: str) -> None:
    """Remove a snapshot's manifest, then its signature, at the destination (it is unlisted)."""
    for name in (MANIFEST, SIGNATURE):
        try:
            dst.fs.rm_file(f"{path}/{name}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise RepositoryError(
                f"cannot remove {path}/{name} to copy the snapshot again: {exc.strerror or exc}"
            ) from exc
