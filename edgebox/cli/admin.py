"""Commands that set up and inspect a box: init, config, keys, recordings, verify, checkpoint."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click

from edgebox import custody
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
from edgebox.keys import x25519_public_from_file


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--box-id",
    default=lambda: socket.gethostname().split(".")[0][:63] or "box-0001",
    help="A unique name for this box (default: the host name).",
)
@click.option("--organisation", default="Demo Organisation", help="Who runs the box.")
@click.option("--site", default="Demo Vehicle", help="The vehicle or station it sits in.")
@click.option("--listen", default="0.0.0.0:8443", help="HOST:PORT of the HTTPS server.")
@click.option("--supervisor", default="supervisor", help="Name of the first review-key slot.")
@click.option(
    "--secret-file", type=click.Path(dir_okay=False), help="File holding that slot's secret."
)
@click.option(
    "--demo", is_flag=True, help="Also make a demo central key pair (never for real use)."
)
@json_option
@handle_errors
def init(folder, box_id, organisation, site, listen, supervisor, secret_file, demo, as_json):
    """Create a new box in FOLDER: config, database, identity, TLS certificate, review key."""
    from edgebox.demo import DEMO_SECRET
    from edgebox.provision import init_box

    demo_secret = demo and not secret_file and not os.environ.get("EDGEBOX_REVIEW_SECRET")
    if demo_secret:
        secret = DEMO_SECRET
    else:
        secret = read_secret(secret_file, "New supervisor review secret", confirm=True)
    result = init_box(
        folder,
        box_id=box_id,
        organisation=organisation,
        site=site,
        listen=listen,
        supervisor=supervisor,
        review_secret=secret,
        demo=demo,
    )
    if demo_secret:
        result["demo_review_secret"] = secret
    emit(
        result,
        as_json,
        lambda r: click.echo(
            f"Box {r['box_id']} created: config {r['config']}\n"
            + (
                ""
                if demo
                else "Next: edgebox keys import-central FILE --config " + r["config"] + "\n"
            )
        ),
    )


@main.group()
def config():
    """Inspect the box configuration."""


@config.command("check")
@config_option
@json_option
@handle_errors
def config_check(config_file, as_json):
    """Validate the config file and environment overrides without starting anything."""
    cfg = load(config_file)
    emit(
        {"ok": True, "source": cfg.source, "config": cfg.to_dict()},
        as_json,
        lambda r: click.echo(f"{r['source']}: OK"),
    )


@main.group()
def keys():
    """Manage central's recipient key and the supervisors' review-key slots."""


@keys.command("import-central")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@config_option
@json_option
@handle_errors
def keys_import_central(public_key, config_file, as_json):
    """Make PUBLIC_KEY (X25519, PEM or base64) the key new recordings are wrapped to."""
    with opened_box(config_file) as box:
        previous = box.keys.active_central_id()
        kid = box.keys.import_central(x25519_public_from_file(public_key))
        try:
            custody.record(box.store, "key.central_imported", "operator", None, {"key_id": kid})
        except BaseException:  # no active key that the custody log does not show
            box.keys.activate_central(previous)
            raise
    emit({"central_key_id": kid}, as_json, lambda r: click.echo(f"central key {kid} is active"))


@keys.command("add-supervisor")
@click.argument("name")
@click.option(
    "--secret-file", type=click.Path(dir_okay=False), help="An existing supervisor's secret."
)
@click.option(
    "--new-secret-file", type=click.Path(dir_okay=False), help="The new supervisor's secret."
)
@config_option
@handle_errors
def keys_add_supervisor(name, secret_file, new_secret_file, config_file):
    """Give supervisor NAME their own secret for the review key (needs an existing secret)."""
    with opened_box(config_file) as box:
        unlocked = box.keys.unlock_review(
            read_secret(secret_file, "An existing supervisor's secret")
        )
        box.keys.add_review_slot(
            name, read_secret(new_secret_file, f"New secret for {name}", True), unlocked
        )
        custody.record(box.store, "key.review_slot_added", "operator", None, {"slot": name})
    click.echo(f"supervisor {name} can now unlock local review")


@main.group()
def recordings():
    """Recordings held by the box: list them, adopt vault files left without a row."""


@recordings.command("list")
@click.option("--limit", default=50, show_default=True, help="How many, newest first.")
@config_option
@json_option
@handle_errors
def recordings_list(limit, config_file, as_json):
    """Recordings newest first with their evidence hashes."""
    with opened_box(config_file) as box:
        rows = box.recordings(limit=limit)

    def text(rows):
        for r in rows:
            click.echo(f"{r['id']}  {r['serial']:<12} {r['size']:>12} B  {r['evidence_sha256']}")
        click.echo(f"{len(rows)} recording(s)")

    emit(rows, as_json, text)


@recordings.command("adopt")
@click.argument("files", nargs=-1)
@click.option("--secret-file", type=click.Path(dir_okay=False), help="Supervisor review secret.")
@config_option
@json_option
@handle_errors
def recordings_adopt(files, secret_file, config_file, as_json):
    """Rebuild the rows of vault files no recording accounts for (after a restore; stop the box
    first): each is decrypted and checked whole. FILES limits it to those vault file names.
    Exit 1 when a file was skipped."""
    from edgebox.adopt import adopt_orphans, describe, unlock_supervisor
    from edgebox.replication.litestream import refuse_if_running

    with opened_box(config_file) as box:
        refuse_if_running(box.config)  # before asking for the secret
        supervisor, review = unlock_supervisor(box.keys, read_secret(secret_file))
        result = adopt_orphans(box, supervisor, review, list(files))
    emit(result, as_json, lambda r: click.echo("\n".join(describe(r))))
    raise SystemExit(1 if result["skipped"] else 0)


@main.command()
@config_option
@json_option
@handle_errors
def status(config_file, as_json):
    """What the box holds: recordings, cameras, uploads, custody head, storage, keys."""
    with opened_box(config_file) as box:
        report = box.status()

    def text(r):
        click.echo(
            f"box {r['box_id']}: {r['recordings']['n']} recordings, "
            f"{r['cameras']['paired']} cameras, {len(r['uploads_in_progress'])} uploads in "
            f"progress, custody {r['custody']['entries']} entries, "
            f"{r['storage']['free_bytes'] // 2**20} MiB free"
        )
        for alarm in r["alarms"]:
            click.echo(f"ALARM ({alarm['severity']}) {alarm['message']}")
        for job_id, job in r["jobs"].items():
            error = job["last_error"]
            click.echo(
                f"job {job_id}: last run {job['last_run'] or 'never'}"
                + (f" ({job['last_outcome']})" if job["last_outcome"] else "")
                + f", next {job['next_run'] or 'not scheduled'}"
                + (f", last error {error['at']}: {error['message']}" if error else "")
            )

    emit(report, as_json, text)


@main.command()
@click.option(
    "--deep", is_flag=True, help="Also decrypt every recording (asks for a review secret)."
)
@click.option("--secret-file", type=click.Path(dir_okay=False), help="Review secret for --deep.")
@click.option(
    "--checkpoint/--no-checkpoint",
    default=False,
    help="Sign a checkpoint of the head once everything verified (never of a damaged box).",
)
@config_option
@json_option
@handle_errors
def verify(deep, secret_file, checkpoint, config_file, as_json):
    """Check the custody chain, signed checkpoints and every vault file; exit 0 only if intact."""
    from edgebox.verify import verify_box

    with opened_box(config_file) as box:
        review = box.keys.unlock_review(read_secret(secret_file)) if deep else None
        report = verify_box(box, review)
        if checkpoint and report.ok:  # a damaged box is reported, never signed
            signed = box.checkpoint()
            if signed is not None:
                report.checkpoints += 1
                report.signed_seq = signed["seq"]

    def text(r):
        for problem in r["problems"]:
            click.echo(f"FAIL {problem}")
        head = r["head"]
        click.echo(
            f"chain head: entry {head['seq']} ({head['hash'][:16]}...), signed through entry "
            f"{r['signed_through']} by identity key {r['identity_key_id']}; compare with "
            "central's copy to see entries cut from the end or an older database put back"
        )
        click.echo(
            f"{'OK' if r['ok'] else 'DAMAGED'}: {r['entries']} custody entries, "
            f"{r['checkpoints']} checkpoints, {r['recordings']} recordings"
            + (f", {r['decrypted']} decrypted" if deep else "")
        )

    emit(report.to_dict(), as_json, text)
    raise SystemExit(0 if report.ok else 1)


@main.command("checkpoint")
@config_option
@json_option
@handle_errors
def checkpoint_cmd(config_file, as_json):
    """Sign the custody chain's current head now."""
    with opened_box(config_file) as box:
        row = box.checkpoint()
    emit(
        row or {"checkpoint": None},
        as_json,
        lambda r: click.echo("signed" if row else "nothing new since the last checkpoint"),
    )
