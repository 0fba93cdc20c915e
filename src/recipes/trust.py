"""Which snapshots to believe: a manifest counts only when a trusted key signed its exact bytes
(sshsig, namespace ``recipes-manifest``) and it names the recipe, host and id of where it lies.

age encryption to a public key authenticates nothing: anyone who can write to the repository
can encrypt a forged snapshot to the same recipients. The signature is what makes the sha256 of
each object in the manifest worth checking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from recipes import manifest as mf
from recipes import signing
from recipes.errors import VerifyError
from recipes.repository import Listed, safe_name
from recipes.verified import VerifiedManifests

log = logging.getLogger("recipes")


@attrs.frozen
class Trust:
    """The public keys trusted to sign manifests, and whether unsigned snapshots are let through
    (``--allow-unsigned``: snapshots made before signatures existed, with a warning)."""

    signers: tuple[signing.PublicKey, ...] = ()
    allow_unsigned: bool = False
    verified: VerifiedManifests | None = attrs.field(default=None, eq=False, repr=False)
    """Signatures that already verified on this controller (speed only: see ``recipes.verified``)."""

    def remembering(self, verified: VerifiedManifests) -> Trust:
        """The same trust, skipping the signature check of exact bytes that passed it before."""
        return attrs.evolve(self, verified=verified)

    def problem(self, item: Listed) -> str | None:
        """Why ``item`` must not be believed, or None when it is signed by a trusted key and lies
        where it says it belongs."""
        m = item.manifest
        if (safe_name(m.recipe), safe_name(m.host), m.snapshot) != (
            item.recipe_dir,
            item.host_dir,
            item.snapshot_dir,
        ):
            return (
                f"its manifest names {m.recipe}/{m.host}/{m.snapshot} but it lies at "
                f"{item.recipe_dir}/{item.host_dir}/{item.snapshot_dir} (moved or forged)"
            )
        if item.signature is None:
            if self.allow_unsigned:
                return None
            return "it is not signed (made before signatures, or forged): pass --allow-unsigned to trust it"
        if not self.signers:
            return "no signers are configured to check it: set [repository] signers in recipes.toml"
        entry = None
        if self.verified is not None:
            where = f"{item.recipe_dir}/{item.host_dir}/{item.snapshot_dir}"
            entry = self.verified.digest(where, item.raw, item.signature, self.signers)
            if entry is not None and entry in self.verified:
                return None
        try:
            signing.verify(item.raw, item.signature, self.signers, signing.MANIFEST_NAMESPACE)
        except VerifyError as exc:
            return f"its signature does not verify: {exc}"
        if entry is not None and self.verified is not None:
            self.verified.add(entry)  # only what passed, keyed by its exact bytes
        return None

    def check(self, item: Listed) -> mf.Manifest:
        """The manifest, or VerifyError (exit 3) naming the snapshot and why."""
        reason = self.problem(item)
        if reason is not None:
            raise VerifyError(f"snapshot {item.snapshot_dir} of {item.recipe_dir}@{item.host_dir}: {reason}")
        if item.signature is None:
            log.warning(
                "snapshot %s is unsigned: trusted only because of --allow-unsigned", item.manifest.snapshot
            )
        return item.manifest

    def lookup(self, fetch: Callable[[str], Listed | None]) -> Callable[[str], mf.Manifest | None]:
        """A ``chain.resolve`` lookup that checks every parent it hands out."""

        def get(snapshot: str) -> mf.Manifest | None:
            item = fetch(snapshot)
            return self.check(item) if item is not None else None

        return get
