"""Commands for the Litestream replica: rebuild the database from it, and report replication."""

from __future__ import annotations

import click

from edgebox.cli import config_option, emit, handle_errors, json_option, load, main


@main.command()
@click.option(
    "--from",
    "from_path",
    metavar="PATH",
    help="Replica folder (the one holding ltx/) or URL; default: this box's own replica.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing database; it is moved to data/replaced-TIME/, never deleted.",
)
@config_option
@json_option
@handle_errors
def restore(from_path, force, config_file, as_json):
    """Rebuild the box's database from its Litestream replica (stop the box first)."""
    from edgebox.replication import restore_database

    report = restore_database(load(config_file), from_path, force=force)

    def text(r):
        click.echo(
            f"restored {r['restored']} from {r['source']} (txid {r['txid']}): "
            f"{r['recordings']} recordings, {r['custody_entries']} custody entries"
        )
        if r["replaced"]:
            click.echo(f"the previous database was moved to {r['replaced']}")
        for name in r["orphan_vault_files"]:
            click.echo(
                f"WARNING vault file {name} has no recording in the restored database "
                "(ingested after the replica's last position); it is kept, see docs/replication.md"
            )
        for name in r["missing_vault_files"]:
            click.echo(f"WARNING recording file {name} is not in the vault folder")
        click.echo("next: edgebox verify")

    emit(report, as_json, text)


@main.group()
def replication():
    """Litestream replication of the box's database to its second medium."""


@replication.command("status")
@config_option
@json_option
@handle_errors
def replication_status_cmd(config_file, as_json):
    """Is Litestream running, how far the replica has got, and its last error."""
    from edgebox.replication import replication_status

    report = replication_status(load(config_file))

    def text(r):
        click.echo(
            f"replication {r['state']}: replica {r['replica']} at txid {r['replica_txid']}, "
            f"lag {r['lag_seconds']} s, {r['restarts']} restarts"
        )
        if r["last_error"]:
            click.echo(f"last error: {r['last_error']}")

    emit(report, as_json, text)
