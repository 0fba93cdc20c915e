"""Break-glass restore: fenced ``sh`` blocks that restore a plan with standard tools only.

Rendered from the same ops the engine executes (``Plan.ops()``), so the blocks cannot drift from
what ``recipes restore`` does. Secrets are never written in: a block reads them from variables
the operator sets (named in the first block), and the runbook says where each one is kept.
"""

from __future__ import annotations

import attrs

from recipes import manifest as mf
from recipes import ops
from recipes.model import sh
from recipes.plan import Plan


@attrs.frozen
class Block:
    """One fenced ``sh`` block of the runbook: run in order, as written, in one shell."""

    title: str
    script: str
    check: str = ""
    """How to see the block worked (prose, shown under it)."""


def blocks(plan: Plan, repo_url: str, manifest: mf.Manifest | None = None) -> list[Block]:
    """The break-glass blocks for a restore ``plan``; with ``manifest`` the snapshot's real object
    names, sizes and sha256 are filled in, else ``$SNAPSHOT`` stands for the snapshot's folder."""
    snapshot = (
        f"{repo_url.rstrip('/')}/{manifest.recipe}/{manifest.host}/{manifest.snapshot}"
        if manifest
        else f"{repo_url.rstrip('/')}/{plan.recipe}/<host>/<snapshot>"
    )
    out = [
        Block(
            "Set the variables every block uses",
            "\n".join(
                [
                    f"HOST={sh(plan.host)}  # the host to restore onto (ssh destination)",
                    'IDENTITY="$HOME/.config/recipes/identity.txt"  # the age secret key',
                    f"SNAPSHOT={sh(snapshot)}",
                ]
            ),
        )
    ]
    for i, op in enumerate(plan.ops(), 1):
        if isinstance(op, ops.Transfer) and isinstance(op.dst, ops.HostCommand):
            out.append(
                Block(
                    f"{i}. {op.what}",
                    f'{op.src.shell()} | ssh "$HOST" {sh(op.dst.shell())}',
                )
            )
        elif isinstance(op, ops.Exec):
            out.append(Block(f"{i}. run on the host", f'ssh "$HOST" {sh(op.command.masked())}'))
    return out
