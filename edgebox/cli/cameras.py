"""`edgebox cameras`: pair, list and revoke cameras."""

from __future__ import annotations

import click

from edgebox import serving
from edgebox.cli import (
    config_option,
    emit,
    handle_errors,
    json_option,
    main,
    opened_box,
    read_secret,
)
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
    """Paired cameras, newest first; RTSP cameras carry their live state under `rtsp`."""
    with opened_box(config_file) as box:
        rows = box.pairing.devices()
        pulled = {r["id"]: r for r in _registry(box).list()}
    for row in rows:
        if row["id"] in pulled:
            row["rtsp"] = pulled[row["id"]]

    def text(rows):
        for r in rows:
            state = (
                f"revoked {r['revoked_at']}"
                if r["revoked_at"]
                else f"last seen {r['last_seen_at']}"
            )
            if "rtsp" in r and not r["revoked_at"]:
                live = r["rtsp"]
                state = f"{live['state']} since {live['state_since']}"
                if live["error"]:
                    state += f" ({live['error']})"
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


def _registry(box):
    from edgebox.recorder.service import registry_of

    return registry_of(box)


def pulled_camera_options(command):
    """The options every command adding a camera the box pulls from takes: the password
    file, and the pre- and post-event times."""
    for option in reversed(
        (
            click.option(
                "--password-file",
                metavar="FILE",
                help="File holding the camera's password (else $EDGEBOX_CAMERA_PASSWORD, or a "
                "prompt).",
            ),
            click.option(
                "--pre-event",
                type=float,
                help="Seconds kept before a trigger (at least 30; default: config).",
            ),
            click.option(
                "--post-event", type=float, help="Seconds recorded after a stop (default: config)."
            ),
        )
    ):
        command = option(command)
    return command


def _camera_password(username: str | None, password_file: str | None) -> str | None:
    """The camera's password when it has a user name (file, environment or prompt)."""
    if not username:
        return None
    return read_secret(password_file, "Camera password", env="EDGEBOX_CAMERA_PASSWORD")


@cameras.command("add-rtsp")
@click.argument("name")
@click.argument("url")
@click.option("--username", help="User name on the camera (or put it in the URL).")
@pulled_camera_options
@config_option
@json_option
@handle_errors
def add_rtsp(name, url, username, password_file, pre_event, post_event, config_file, as_json):
    """Add a camera the box pulls from over RTSP (URL rtsp://HOST[:PORT]/PATH); its
    credentials are stored sealed, never in clear. The running box starts pulling it within
    seconds."""
    password = _camera_password(username, password_file)
    with opened_box(config_file) as box:
        row = _registry(box).add(
            name,
            url,
            "operator",
            username=username,
            password=password,
            pre_event_seconds=pre_event,
            post_event_seconds=post_event,
        )
    emit(row, as_json, lambda r: click.echo(f"camera {r['name']} added as {r['id']} ({r['url']})"))


@cameras.command("discover")
@click.option("--timeout", type=float, default=3.0, help="Seconds to gather answers.")
@click.option(
    "--address",
    metavar="HOST:PORT",
    help="Probe one device directly instead of the multicast group 239.255.255.250:3702.",
)
@json_option
@handle_errors
def discover(timeout, address, as_json):
    """Find ONVIF cameras on the camera network (WS-Discovery) and list their addresses."""
    from edgebox.config import parse_listen
    from edgebox.recorder import onvif

    target = parse_listen(address) if address else onvif.MULTICAST
    found = onvif.discover(timeout, target)

    def text(rows):
        if not rows:
            click.echo("no ONVIF camera answered")
        for r in rows:
            click.echo(f"{r['name'] or '?':<20} {r['hardware'] or '?':<16} {' '.join(r['xaddrs'])}")

    emit(found, as_json, text)


@cameras.command("add-onvif")
@click.argument("name")
@click.argument("xaddr")
@click.option("--username", help="User name on the camera (ONVIF and RTSP).")
@click.option("--profile", help="Media profile token (default: the camera's first).")
@pulled_camera_options
@config_option
@json_option
@handle_errors
def add_onvif(
    name, xaddr, username, password_file, profile, pre_event, post_event, config_file, as_json
):
    """Add a camera by its ONVIF device service address (XADDR, as `discover` lists it): the
    box asks it for its profiles and the chosen profile's RTSP URI, then pulls that."""
    from edgebox.recorder import onvif

    password = _camera_password(username, password_file)
    chosen = onvif.pick_profile(onvif.stream_profiles(xaddr, username, password), profile)
    with opened_box(config_file) as box:
        row = _registry(box).add(
            name,
            chosen["uri"],
            "operator",
            username=username,
            password=password,
            pre_event_seconds=pre_event,
            post_event_seconds=post_event,
            onvif_xaddr=xaddr,
        )
    row["onvif_profile"] = chosen
    emit(
        row,
        as_json,
        lambda r: click.echo(
            f"camera {r['name']} added as {r['id']} ({r['url']}, profile {chosen['token']})"
        ),
    )
