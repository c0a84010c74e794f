"""Every command has help text and a place in the README; every module and public function a docstring."""

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


def test_every_public_function_has_a_docstring():
    missing = []
    for path in sorted((ROOT / "edgebox").rglob("*.py")):
        tree = ast.parse(path.read_text())
        if not ast.get_docstring(tree):
            missing.append(f"{path.relative_to(ROOT)}: module")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if node.name.startswith("_") or ast.get_docstring(node):
                    continue
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert missing == []
