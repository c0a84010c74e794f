"""`edgebox cameras`: pair, list and revoke cameras."""

from __future__ import annotations

import click

from edgebox import serving
from edgebox.cli import config_option, emit, handle_errors, json_option, main, opened_box
from edgebox.keys import certificate_fingerprint


@main.group()
def cameras():
    """Pair, list and revoke the cameras that may upload to this box."""


def box_url(box) -> str:
    """The URL cameras should use: server.public_url, else the URL the running box serves
    (`edgebox.serving`), else derived from server.listen."""
    if box.config.server.public_url:
        return box.config.server.public_url.rstrip("/")
    running = serving.running_url(box.data_dir)
    if running:
        return running
    host, port = box.config.listen_address
    if host in ("0.0.0.0", "::"):  # noqa: S104
        host = "127.0.0.1"
    scheme = "https" if box.config.server.tls else "http"
    return f"{scheme}://{host}:{port}"


@cameras.command("pair")
@config_option
@json_option
@handle_errors
def pair(config_file, as_json):
    """Print a one-time pairing code (valid for ingest.pairing_code_minutes) and the box's pin."""
    with opened_box(config_file) as box:
        result = box.pairing.new_code()
        result["box_url"] = box_url(box)
        result["cert_sha256"] = certificate_fingerprint(box.keys.tls_cert.read_bytes())
    emit(
        result,
        as_json,
        lambda r: click.echo(
            f"pairing code {r['code']} (expires {r['expires_at']})\nbox {r['box_url']}\n"
            f"certificate sha256 {r['cert_sha256']}"
        ),
    )


@cameras.command("list")
@config_option
@json_option
@handle_errors
def list_cameras(config_file, as_json):
    """Paired cameras, newest first."""
    with opened_box(config_file) as box:
        rows = box.pairing.devices()

    def text(rows):
        for r in rows:
            state = (
                f"revoked {r['revoked_at']}"
                if r["revoked_at"]
                else f"last seen {r['last_seen_at']}"
            )
            click.echo(f"{r['id']}  {r['serial']:<16} {r['model']:<16} {state}")

    emit(rows, as_json, text)


@cameras.command("revoke")
@click.argument("device_id")
@config_option
@json_option
@handle_errors
def revoke(device_id, config_file, as_json):
    """Revoke DEVICE_ID's token; it can no longer upload (its recordings stay)."""
    with opened_box(config_file) as box:
        row = box.pairing.revoke(device_id)
    emit(row, as_json, lambda r: click.echo(f"camera {r['id']} ({r['serial']}) revoked"))
