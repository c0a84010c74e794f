"""`edgebox axis`: point a depot's Axis body worn system at this box (docs/axis.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from edgebox.axis.documents import connection_file
from edgebox.axis.groups import overview
from edgebox.cli import config_option, emit, handle_errors, json_option, main, opened_box
from edgebox.cli.cameras import box_url


@main.group()
def axis():
    """Axis body worn systems as a source: accounts and the connection file for the BWM."""


@axis.command("add-account")
@click.argument("username")
@config_option
@json_option
@handle_errors
def add_account(username, config_file, as_json):
    """Create the Axis account USERNAME; its key is printed once (put it in the BWM only
    through `edgebox axis connection-file`)."""
    with opened_box(config_file) as box:
        result = box.axis.accounts.add(username)
    emit(
        result,
        as_json,
        lambda r: click.echo(f"Axis account {r['username']} created; key {r['key']}"),
    )


@axis.command("accounts")
@config_option
@json_option
@handle_errors
def list_accounts(config_file, as_json):
    """Axis accounts and whether they are enabled."""
    with opened_box(config_file) as box:
        rows = box.axis.accounts.list()

    def text(rows):
        for r in rows:
            state = f"disabled {r['disabled_at']}" if r["disabled_at"] else "enabled"
            click.echo(f"{r['username']:<24} created {r['created_at']}  {state}")

    emit(rows, as_json, text)


@axis.command("disable-account")
@click.argument("username")
@config_option
@json_option
@handle_errors
def disable_account(username, config_file, as_json):
    """Disable USERNAME: its key and every token it holds stop working at once."""
    with opened_box(config_file) as box:
        box.axis.accounts.disable(username)
    emit({"username": username, "disabled": True}, as_json, lambda r: click.echo("disabled"))


@axis.command("connection-file")
@click.option("--account", default="axis", show_default=True, help="The Axis account to use.")
@click.option("--site", help="SiteName shown in the BWM (default: box.site).")
@click.option(
    "--uri",
    "uris",
    multiple=True,
    help="Token URI(s) the controller authenticates at (default: the box's URL + /auth/v1.0).",
)
@click.option(
    "--container-type",
    type=click.Choice(["mp4", "mkv"]),
    default="mp4",
    show_default=True,
    help="Clip format the controller uploads.",
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False),
    help="RSA public key (PEM) for end-to-end encryption; central holds the private key.",
)
@click.option("--public-key-id", help="Id written into every key object (with --public-key).")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the file here (0600).")
@config_option
@json_option
@handle_errors
def write_connection_file(
    account, site, uris, container_type, public_key, public_key_id, output, config_file, as_json
):
    """The connection file an AXIS Body Worn Manager imports. It holds a fresh key for the
    account (created if missing): an earlier connection file of that account stops working."""
    with opened_box(config_file) as box:
        accounts = box.axis.accounts
        known = {r["username"] for r in accounts.list()}
        creds = accounts.new_key(account) if account in known else accounts.add(account)
        document = connection_file(
            site=site or box.config.box.site,
            token_uris=list(uris) or [f"{box_url(box)}/auth/v1.0"],
            certificate_pem=box.keys.tls_cert.read_bytes(),
            username=creds["username"],
            key=creds["key"],
            container_type=container_type,
            public_key_pem=Path(public_key).read_bytes() if public_key else None,
            public_key_id=public_key_id,
        )
    text = json.dumps(document, indent=2)
    if output:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    if as_json or not output:
        click.echo(text)
    else:
        click.echo(f"connection file for account {account} written to {output}")


@axis.command("status")
@config_option
@json_option
@handle_errors
def status(config_file, as_json):
    """Connected body worn systems, their users, and Axis recordings not yet Complete."""
    with opened_box(config_file) as box:
        result = overview(box.store)

    def text(r):
        for s in r["systems"]:
            click.echo(f"system {s['system_id']}  {s['name'] or ''}")
        click.echo(f"{len(r['users'])} Axis users")
        for rec in r["open_recordings"]:
            click.echo(
                f"incomplete {rec['name']}  {rec['objects']} objects  since {rec['created_at']}"
            )

    emit(result, as_json, text)
