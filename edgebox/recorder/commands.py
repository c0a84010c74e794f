"""Commands from central over the sync link (topic `edgebox/v1/<box>/command`).

The broker authenticates both ends (mutual TLS) and its ACL lets only central publish on a
box's command topic. A command is JSON: `{"id", "command": "record", "who", "why",
"cameras"?, "where"?, "incident"?, "post_event_seconds"?, "until_stopped"?}` or
`{"id", "command": "stop", "who", "trigger_id"}`. Each is logged in custody (event
`central.command`, subject its id) before it runs, and a redelivered id is ignored, so
QoS 1's duplicates are harmless. A refused command is logged with its error.
"""

from __future__ import annotations

import logging
import re

from edgebox import custody
from edgebox.errors import EdgeboxError
from edgebox.sync import protocol

log = logging.getLogger("edgebox.recorder")
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def run_command(box, payload: bytes) -> dict | None:
    """Check, log and carry out one command; returns its result (None when ignored)."""
    try:
        message = protocol.decode(payload)
    except protocol.ProtocolError as exc:
        log.warning("ignored malformed command: %s", exc.message)
        return None
    command_id = message.get("id")
    if not isinstance(command_id, str) or not _ID.match(command_id):
        log.warning("ignored a command without a valid id")
        return None
    if box.store.one(
        "SELECT 1 FROM custody WHERE subject = ? AND event = 'central.command'", (command_id,)
    ):
        return None  # a redelivery
    who = message.get("who")
    actor = f"central:{who}" if isinstance(who, str) and who else "central"
    entry = {k: v for k, v in message.items() if k != "id"}
    custody.record(box.store, "central.command", actor[:140], command_id, entry)
    try:
        result = _dispatch(box, message, actor[:140])
    except EdgeboxError as exc:
        custody.record(
            box.store, "central.command_refused", "box", command_id, {"error": exc.message}
        )
        return {"error": exc.message}
    return result


def _dispatch(box, message: dict, actor: str) -> dict:
    if box.recorder is None:
        raise EdgeboxError("the recorder is not running", status=503)
    command = message.get("command")
    if command == "record":
        body = {k: v for k, v in message.items() if k not in ("id", "command", "who")}
        return box.recorder.trigger(body, actor, "central")
    if command == "stop":
        return box.recorder.stop_trigger(str(message.get("trigger_id", "")), actor)
    raise EdgeboxError(f"unknown command {command!r}", status=400)
