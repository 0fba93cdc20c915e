"""Recipe + parameters -> Plan: the ordered steps and their masked commands. Reads no host."""

from __future__ import annotations

from typing import Any

import attrs

from recipes.compression import DEFAULT_COMPRESSION, Compression
from recipes.recipe import Recipe, chain_of, params_dict
from recipes.steps import Archive, Dump, Extract, Load, Quiesce, Run, Step


@attrs.frozen
class Plan:
    """What a backup or a restore will do, step by step."""

    recipe: str
    host: str
    action: str
    params: dict[str, Any]
    steps: tuple[Step, ...]
    compression: Compression = DEFAULT_COMPRESSION
    chain_params: dict[str, Any] = attrs.Factory(dict)
    """The parameters whose change starts a new incremental chain (see ``chain.choose``)."""

    def lines(self) -> list[str]:
        """Numbered steps with every command, masked, for ``recipes plan`` and logs."""
        out = [f"{self.action} {self.recipe} on {self.host}"]
        for i, step in enumerate(self.steps, 1):
            out.append(f"{i}. {kind(step)} {step.name}: {step.about}".rstrip(": "))
            target = stored_object(step)
            if target:
                arrow = "->" if self.action == "backup" else "<-"
                out.append(f"   {arrow} {target}.zst.age ({self.compression.describe(self.action)})")
            out += [f"   {note}" for note in chain_notes(step)]
            for command in step.commands():
                out.append(f"   $ {command.masked()}")
            if isinstance(step, Quiesce):
                out.append(f"   undo (always, if it was running): $ {step.start.masked()}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "host": self.host,
            "action": self.action,
            "params": self.params,
            "compression": {
                "mode": self.compression.mode,
                "level": self.compression.level,
                "where": self.compression.describe(self.action),
            },
            "steps": [
                {
                    "kind": kind(step),
                    "name": step.name,
                    "about": step.about,
                    "object": stored_object(step),
                    "commands": [c.masked() for c in step.commands()],
                    **({"chain": chain_notes(step)} if chain_notes(step) else {}),
                    **({"undo": step.start.masked()} if isinstance(step, Quiesce) else {}),
                }
                for step in self.steps
            ],
        }


def chain_notes(step: Step) -> list[str]:
    """How an archive takes part in incremental chains, for plans and runbooks."""
    if isinstance(step, Archive) and step.state_object:
        return [
            f"-> {step.state_object}.zst.age (tar's listed-incremental state, for the next backup)",
            "incremental on the latest snapshot unless --full, there is none, its parameters or keys "
            "differ, or its chain's full is older than [retention] full_every; $STATE is in a private "
            "temp dir on the host holding the parent's state (none for a full), removed however the "
            "backup ends",
        ]
    if isinstance(step, Extract):
        return [
            "applied for every snapshot of the chain, its full first; each incremental is extracted "
            "with --listed-incremental=/dev/null, which also deletes what was deleted before it was made",
        ]
    return []


def kind(step: Step) -> str:
    return type(step).__name__.lower()


def stored_object(step: Step) -> str | None:
    """The repository object a step writes or reads, if any."""
    if isinstance(step, (Archive, Dump, Extract, Load)):
        return step.object
    return None


def backup_plan(
    recipe: Recipe, params: Any, host: str, compression: Compression = DEFAULT_COMPRESSION
) -> Plan:
    steps = tuple(recipe.backup_steps(params))
    values = params_dict(params)
    return Plan(recipe.name, host, "backup", values, steps, compression, chain_of(recipe, values))


def restore_plan(
    recipe: Recipe, params: Any, host: str, compression: Compression = DEFAULT_COMPRESSION
) -> Plan:
    steps = tuple(recipe.restore_steps(params))
    return Plan(recipe.name, host, "restore", params_dict(params), steps, compression)


__all__ = ["Plan", "Run", "backup_plan", "kind", "restore_plan", "stored_object"]
