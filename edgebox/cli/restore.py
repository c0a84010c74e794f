"""Commands for the Litestream replica: rebuild the database from it, and report replication."""

from __future__ import annotations

import click

from edgebox.cli import (
    config_option,
    emit,
    handle_errors,
    json_option,
    load,
    main,
    opened_box,
    read_secret,
)


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
@click.option(
    "--adopt",
    is_flag=True,
    help="Then adopt the vault files left without a recording (asks for a review secret first).",
)
@click.option("--secret-file", type=click.Path(dir_okay=False), help="Review secret for --adopt.")
@config_option
@json_option
@handle_errors
def restore(from_path, force, adopt, secret_file, config_file, as_json):
    """Rebuild the box's database from its Litestream replica (stop the box first)."""
    from edgebox.replication.litestream import restore_database

    config = load(config_file)
    unlocked = None
    if adopt:  # a wrong secret must stop us before the restore changes anything
        from edgebox.adopt import unlock_supervisor
        from edgebox.keys import Keyring

        unlocked = unlock_supervisor(Keyring(config.data_dir / "keys"), read_secret(secret_file))
    report = restore_database(config, from_path, force=force)
    if unlocked is not None:
        from edgebox.adopt import adopt_orphans

        with opened_box(config_file) as box:
            report["adoption"] = adopt_orphans(box, *unlocked)

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
        for recording_id in r["found_sealed"]:
            click.echo(
                f"recording {recording_id} was sealed after the replica's last position "
                "(central confirmed it); recorded as sealed with its file's hash"
            )
        if "adoption" in r:
            from edgebox.adopt import describe

            click.echo("\n".join(describe(r["adoption"])))
        elif r["orphan_vault_files"]:
            click.echo("adopt them with: edgebox recordings adopt")
        click.echo("next: edgebox verify")

    emit(report, as_json, text)
    raise SystemExit(1 if report.get("adoption", {}).get("skipped") else 0)


@main.group()
def replication():
    """Litestream replication of the box's database to its second medium."""


@replication.command("status")
@config_option
@json_option
@handle_errors
def replication_status_cmd(config_file, as_json):
    """Is Litestream running, how far the replica has got, and its last error."""
    from edgebox.replication.litestream import replication_status

    report = replication_status(load(config_file))

    def text(r):
        click.echo(
            f"replication {r['state']}: replica {r['replica']} at txid {r['replica_txid']}, "
            f"lag {r['lag_seconds']} s, {r['restarts']} restarts"
        )
        if r["last_error"]:
            click.echo(f"last error: {r['last_error']}")

    emit(report, as_json, text)
