"""Every command and subcommand of `appliance` prints its --help (option help is rendered as rich markup, so
a stray "[...]" in it breaks the page)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from appliance.cli import app


def command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():  # a group's subcommands
            walk(sub, [*path, name])

    walk(root, [])
    return paths


def test_the_command_tree_is_walked() -> None:
    assert {"serve", "bench blend", "keys"} <= {" ".join(p) for p in command_paths()}


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "appliance")
def test_help_renders(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Usage" in result.output
