"""Recipe + parameters -> Plan: the ordered steps and their masked commands. Reads no host."""

from __future__ import annotations

from typing import Any

import attrs

from recipes import ops, render
from recipes.compression import DEFAULT_COMPRESSION, Compression
from recipes.recipe import Recipe, chain_of, params_dict
from recipes.render import kind
from recipes.steps import Run, Step


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
        """Numbered steps with every op, masked, for ``recipes plan`` and logs."""
        out = [f"{self.action} {self.recipe} on {self.host}"]
        for i, step in enumerate(self.steps, 1):
            out.append(f"{i}. {kind(step)} {step.name}: {step.about}".rstrip(": "))
            for op in step.ops():
                out += [f"   {line}" for line in render.op_lines(op, self.compression, self.action)]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "recipe": self.recipe,
            "host": self.host,
            "action": self.action,
            "params": self.params,
            "compression": {
                "mode": self.compression.mode,
                "level": self.compression.level,
                "where": self.compression.describe(self.action),
            },
            "steps": [_step_data(step) for step in self.steps],
        }

    def ops(self) -> list[ops.Op]:
        return [op for step in self.steps for op in step.ops()]


# 2: every step also lists its ops (``ops``); the older keys keep their meaning.
PLAN_FORMAT = 2


def _step_data(step: Step) -> dict[str, Any]:
    step_ops = step.ops()
    chain = [line for op in step_ops if isinstance(op, ops.Transfer) for line in _chain(op)]
    undo = [op for op in step_ops if isinstance(op, ops.Undo)]
    return {
        "kind": kind(step),
        "name": step.name,
        "about": step.about,
        "object": stored_object(step),
        "commands": render.commands(step_ops),
        **({"chain": chain} if chain else {}),
        **({"undo": undo[0].command.masked()} if undo else {}),
        "ops": [render.op_data(op) for op in step_ops],
    }


def _chain(op: ops.Transfer) -> list[str]:
    out = []
    for end in (op.src, op.dst):
        if isinstance(end, ops.HostCommand) and end.state is not None:
            out += [render.STATE_LINE.format(end.state), render.ARCHIVE_CHAIN]
        if isinstance(end, ops.SnapshotObject) and end.chain:
            out.append(render.EXTRACT_CHAIN)
    return out


def stored_object(step: Step) -> str | None:
    """The repository object a step writes or reads, if any."""
    for op in step.ops():
        if isinstance(op, ops.Transfer):
            for end in (op.src, op.dst):
                if isinstance(end, ops.SnapshotObject):
                    return end.name
    return None


def backup_plan(
    recipe: Recipe, params: Any, host: str, compression: Compression = DEFAULT_COMPRESSION
) -> Plan:
    steps = tuple(recipe.backup_steps(params))
    values = params_dict(params)
    return Plan(recipe.name, host, "backup", values, steps, compression, chain_of(recipe, values))


def options_of(recipe: Recipe) -> type[Any] | None:
    """The recipe's ``RestoreOptions`` class (options that exist only at restore), if any."""
    attribute = "RestoreOptions"
    found: type[Any] | None = getattr(type(recipe), attribute, None)
    return found


def restore_plan(
    recipe: Recipe,
    params: Any,
    host: str,
    compression: Compression = DEFAULT_COMPRESSION,
    options: Any = None,
) -> Plan:
    """The restore steps; ``options`` are the recipe's ``RestoreOptions`` (None: its defaults)."""
    options_class = options_of(recipe)
    if options is None and options_class is not None:
        options = options_class()
    made = recipe.restore_steps(params) if options is None else recipe.restore_steps(params, options)
    steps = tuple(made)
    return Plan(recipe.name, host, "restore", params_dict(params), steps, compression)


__all__ = ["Plan", "Run", "backup_plan", "kind", "restore_plan", "stored_object"]
