"""The `edgebox` command line: one group, commands grouped by concern in submodules."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys

import click

from edgebox import __version__
from edgebox.config import config_path_from, load_config
from edgebox.errors import EdgeboxError

config_option = click.option(
    "--config",
    "config_file",
    metavar="FILE",
    envvar="EDGEBOX_CONFIG",
    help="The box's config file (default: $EDGEBOX_CONFIG).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def load(config_file: str | None):
    """Load the config named by --config / EDGEBOX_CONFIG, or fail with a clear message."""
    path = config_path_from(config_file)
    if path is None:
        raise click.UsageError("no box config given: pass --config FILE or set EDGEBOX_CONFIG")
    return load_config(path)


def open_box(config_file: str | None):
    """Open the box the config points at (services only, no server)."""
    from edgebox.box import Box

    return Box(load(config_file))


@contextlib.contextmanager
def opened_box(config_file: str | None):
    """The box for the duration of one command; its database is closed afterwards."""
    box = open_box(config_file)
    try:
        yield box
    finally:
        box.store.close()


def emit(data, as_json: bool, text=None) -> None:
    """Print `data` as JSON, or through `text(data)` for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text is not None:
        text(data)
    else:
        click.echo(json.dumps(data, indent=2, default=str))


def read_secret(
    secret_file: str | None,
    prompt: str = "Supervisor review secret",
    confirm: bool = False,
    env: str = "EDGEBOX_REVIEW_SECRET",
) -> str:
    """A secret from its --...-file option, the environment variable `env`, or a prompt."""
    if secret_file:
        with open(secret_file, encoding="utf-8") as handle:
            return handle.read().strip()
    if os.environ.get(env):
        return os.environ[env]
    if not sys.stdin.isatty():
        raise click.UsageError(f"no secret: pass its --...-file option or set {env}")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=confirm)


def handle_errors(fn):
    """Turn EdgeboxError (or an OSError such as a missing or unwritable file) into a one-line
    message, or with --json a JSON object on standard output, and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (EdgeboxError, OSError) as exc:
            if isinstance(exc, EdgeboxError):
                message = exc.message
            elif exc.filename:
                message = f"{exc.strerror}: {exc.filename}"
            else:
                message = exc.strerror or str(exc)
            if kwargs.get("as_json"):
                error = {"ok": False, "error": type(exc).__name__, "message": message}
                click.echo(json.dumps(error, indent=2, sort_keys=True))
            else:
                click.echo(f"error: {message}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgebox")
def main() -> None:
    """EdgeBox: store camera footage encrypted, prove its custody, and sync it upstream."""


from edgebox.cli import (  # noqa: E402,F401 - registers commands
    admin,
    axis,
    cameras,
    central,
    packages,
    reports,
    restore,
    running,
    users,  # noqa: E402,F401 - registers the users group
)
