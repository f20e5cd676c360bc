"""Imports run one way (docs/ARCHITECTURE.md): this test fails when one runs the wrong way.

Every ``import`` of ``bot``, ``handlers`` and ``storage`` (function-level ones included) is
read from the source with ``ast``, mapped to its room (``bot/core``, ``bot/services``,
``storage``, …) and checked against the rooms that room may not import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "handlers", "storage")
BOT_ROOMS = {"core", "atlas", "render", "services", "slack", "runtime", "sandbox", "shell"}
ENTRY_POINTS = {"bot.runtime", "bot.cli", "bot.shell", "bot.__main__"}
ALL_ROOMS = {
    "storage",
    "handlers",
    "bot.deps",
    "bot.cli",
    "bot.__main__",
    *(f"bot.{r}" for r in BOT_ROOMS),
}

# room: the rooms it must never import
FORBIDDEN = {
    "storage": ALL_ROOMS - {"storage"},
    "bot.core": ALL_ROOMS - {"bot.core"},
    "bot.atlas": ALL_ROOMS - {"bot.atlas", "bot.core"},
    "bot.render": {"handlers", "bot.runtime", "bot.slack", "bot.shell", "bot.sandbox", "bot.cli"},
    "bot.services": {"handlers", "bot.runtime", "bot.shell", "bot.sandbox", "bot.cli"},
    "bot.slack": {"handlers", "bot.runtime", "bot.shell", "bot.sandbox", "bot.cli"},
    "bot.sandbox": ALL_ROOMS - {"bot.sandbox", "bot.atlas", "bot.core", "bot.runtime"},
    "handlers": {"storage", "bot.runtime", "bot.shell", "bot.sandbox", "bot.cli"},
}
# Only the process's entry points wire the Slack listeners in.
for room in ALL_ROOMS - ENTRY_POINTS - {"handlers"}:
    FORBIDDEN.setdefault(room, set()).add("handlers")

# Imports that run the wrong way today, each to go. The test fails on any other, and on one
# that is gone.
KNOWN: set[tuple[str, str]] = set()
# The storage exception tree is what the rest of the bot may catch (storage/errors.py),
# and rendering a failure names it.
ALLOWED = {("bot.render.explain", "storage.StorageError")}


def room_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "bot" and len(parts) > 1:
        return f"bot.{parts[1]}"
    return parts[0]


def imports() -> Iterator[tuple[str, str, int]]:
    """(importing module, imported module, line) for every import of our own packages."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    # `from bot import x` imports the module bot.x; `from bot.y import z` bot.y
                    names = [
                        f"{node.module}.{a.name}" if node.module in PACKAGES else node.module
                        for a in node.names
                    ]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] in PACKAGES:
                        yield module, name, node.lineno


def wrong_way() -> set[tuple[str, str]]:
    found = set()
    for module, name, _ in imports():
        importer, imported = room_of(module), room_of(name)
        if importer != imported and imported in FORBIDDEN.get(importer, set()):
            found.add((module, name))
    return found


def test_every_room_is_known():
    rooms = {room_of(m) for m, _, _ in imports()} | {room_of(n) for _, n, _ in imports()}
    assert rooms <= ALL_ROOMS, rooms - ALL_ROOMS


def test_no_import_runs_the_wrong_way():
    unexpected = sorted(wrong_way() - KNOWN - ALLOWED)
    assert not unexpected, "imports against docs/ARCHITECTURE.md:\n" + "\n".join(
        f"  {importer} imports {imported}" for importer, imported in unexpected
    )


def test_the_known_exceptions_still_exist():
    """A known exception that was fixed leaves this list, so it cannot creep back."""
    assert sorted(KNOWN - wrong_way()) == []


@pytest.mark.parametrize(
    ("importer", "imported"),
    [("storage.links", "bot.services.links"), ("bot.atlas._client", "bot.services.spend")],
)
def test_the_rules_catch_what_they_forbid(importer, imported):
    assert room_of(imported) in FORBIDDEN[room_of(importer)]
