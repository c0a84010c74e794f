"""Every command has help and a place in the README; every public definition a docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import click

from edgebox.cli import main

ROOT = Path(__file__).resolve().parents[1]


def commands(group: click.Group, prefix: str = "edgebox"):
    """Yield (full name, command) for every command below `group`."""
    for name, command in sorted(group.commands.items()):
        full = f"{prefix} {name}"
        yield full, command
        if isinstance(command, click.Group):
            yield from commands(command, full)


def test_every_command_has_help_and_is_documented():
    readme = (ROOT / "README.md").read_text()
    undocumented = []
    for full, command in commands(main):
        assert command.help and len(command.help) > 15, f"{full} has no help text"
        if f"`{full}" not in readme:
            undocumented.append(full)
        for option in command.params:
            if isinstance(option, click.Option) and option.name not in ("help",):
                assert option.help, f"{full} {option.opts[0]} has no help text"
    assert undocumented == []


def public_definitions(tree: ast.Module):
    """Module-level public functions and classes, and the public methods of those classes."""
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in tree.body:
        if isinstance(node, kinds) and not node.name.startswith("_"):
            yield node
            if isinstance(node, ast.ClassDef):
                yield from (
                    item
                    for item in node.body
                    if isinstance(item, kinds) and not item.name.startswith("_")
                )


def test_every_public_function_has_a_docstring():
    missing = []
    for path in sorted((ROOT / "edgebox").rglob("*.py")):
        tree = ast.parse(path.read_text())
        if not ast.get_docstring(tree):
            missing.append(f"{path.relative_to(ROOT)}: module")
        for node in public_definitions(tree):
            if not ast.get_docstring(node):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert missing == []
