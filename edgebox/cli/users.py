"""`edgebox users`: the people who may log in to the box's web UI."""

from __future__ import annotations

import click

from edgebox.cli import (
    config_option,
    emit,
    handle_errors,
    json_option,
    main,
    opened_box,
    read_secret,
)
from edgebox.users import ROLES, Users


@main.group()
def users():
    """Add, list, disable users and change their passwords (crew, supervisor, admin)."""


@users.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the user may do.")
@click.option("--password-file", type=click.Path(dir_okay=False), help="File holding the password.")
@config_option
@json_option
@handle_errors
def add_user(username, role, password_file, config_file, as_json):
    """Create USERNAME with a role; the password is asked for unless --password-file is given."""
    password = read_secret(
        password_file, f"Password for {username}", confirm=True, env="EDGEBOX_USER_PASSWORD"
    )
    with opened_box(config_file) as box:
        row = Users(box.store).add(username, role, password)
    emit(row, as_json, lambda r: click.echo(f"user {r['username']} ({r['role']}) added"))


@users.command("list")
@config_option
@json_option
@handle_errors
def list_users(config_file, as_json):
    """Every user with role and state."""
    with opened_box(config_file) as box:
        rows = Users(box.store).list()

    def text(rows):
        for r in rows:
            state = "disabled" if r["disabled"] else "active"
            click.echo(f"{r['username']:<24} {r['role']:<11} {state}")

    emit(rows, as_json, text)


def _state_command(name: str, disabled: bool, help_text: str):
    """Register `edgebox users NAME USERNAME` that disables or re-enables a user."""

    @users.command(name, help=help_text)
    @click.argument("username")
    @config_option
    @json_option
    @handle_errors
    def command(username, config_file, as_json):
        with opened_box(config_file) as box:
            row = Users(box.store).set_disabled(username, disabled)
        emit(row, as_json, lambda r: click.echo(f"user {r['username']} {name}d"))

    return command


disable_user = _state_command("disable", True, "Disable USERNAME and end all their sessions.")
enable_user = _state_command("enable", False, "Allow a disabled USERNAME to log in again.")


@users.command("passwd")
@click.argument("username")
@click.option("--password-file", type=click.Path(dir_okay=False), help="File holding the password.")
@config_option
@handle_errors
def passwd(username, password_file, config_file):
    """Set a new password for USERNAME (ends their sessions)."""
    password = read_secret(
        password_file, f"New password for {username}", confirm=True, env="EDGEBOX_USER_PASSWORD"
    )
    with opened_box(config_file) as box:
        Users(box.store).set_password(username, password)
    click.echo(f"password of {username} changed")
