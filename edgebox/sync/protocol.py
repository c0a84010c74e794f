"""Topics and messages of the sync protocol, shared by box and central (docs/sync-protocol.md)."""

from __future__ import annotations

import base64
import hashlib
import json
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgebox.errors import EdgeboxError
from edgebox.vault import canonical

PREFIX = "edgebox/v1"
SHARE_GROUP = "central"
_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
_TOPIC = re.compile(
    rf"^{PREFIX}/(?P<box>{_ID})/(?:(?P<simple>meta|status|ack)"
    rf"|file/(?P<tid>[A-Za-z0-9._-]{{1,128}})/(?P<part>init|fin|seg/(?P<offset>\d{{1,15}})"
    rf"/(?P<sha>[0-9a-f]{{64}})))$"
)


class ProtocolError(EdgeboxError):
    """A message that does not follow the sync protocol."""

    status = 400


def meta_topic(box: str) -> str:
    """Where a box publishes metadata events and custody entries."""
    return f"{PREFIX}/{box}/meta"


def status_topic(box: str) -> str:
    """The retained online/offline status of a box."""
    return f"{PREFIX}/{box}/status"


def ack_topic(box: str) -> str:
    """Where central answers a box."""
    return f"{PREFIX}/{box}/ack"


def command_topic(box: str) -> str:
    """Where central sends a box commands (such as: record these cameras now)."""
    return f"{PREFIX}/{box}/command"


def init_topic(box: str, tid: str) -> str:
    """Start (or resume) a file transfer."""
    return f"{PREFIX}/{box}/file/{tid}/init"


def segment_topic(box: str, tid: str, offset: int, sha256: str) -> str:
    """One segment of a file, addressed by offset, with its SHA-256."""
    return f"{PREFIX}/{box}/file/{tid}/seg/{offset}/{sha256}"


def fin_topic(box: str, tid: str) -> str:
    """End of a file transfer: size and whole-file SHA-256."""
    return f"{PREFIX}/{box}/file/{tid}/fin"


def central_subscriptions() -> list[str]:
    """The shared subscriptions every central worker holds."""
    return [f"$share/{SHARE_GROUP}/{PREFIX}/+/meta", f"$share/{SHARE_GROUP}/{PREFIX}/+/file/#"]


def parse_topic(topic: str) -> dict:
    """Split an upstream topic into its parts, or raise ProtocolError."""
    match = _TOPIC.match(topic)
    if not match:
        raise ProtocolError(f"not a sync topic: {topic[:120]!r}")
    parts = match.groupdict()
    kind = parts["simple"] or parts["part"].split("/")[0]
    return {
        "box": parts["box"],
        "kind": kind,
        "tid": parts["tid"],
        "offset": int(parts["offset"]) if parts["offset"] else None,
        "sha256": parts["sha"],
    }


def encode(message: dict) -> bytes:
    """A JSON message as bytes."""
    return json.dumps(message, sort_keys=True, separators=(",", ":")).encode()


def decode(payload: bytes) -> dict:
    """Parse a JSON message (an object), or raise ProtocolError."""
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("payload is not JSON") from None
    except RecursionError:
        raise ProtocolError("payload is JSON nested too deep") from None
    if not isinstance(value, dict):
        raise ProtocolError("payload is not a JSON object")
    return value


def sign(body: dict, identity: Ed25519PrivateKey) -> str:
    """An Ed25519 signature over the canonical JSON of `body`, base64."""
    return base64.b64encode(identity.sign(canonical(body))).decode()


def check_signature(body: dict, signature: str, public: Ed25519PublicKey) -> bool:
    """Whether `signature` signs `body` under `public`."""
    try:
        public.verify(base64.b64decode(signature), canonical(body))
        return True
    except (InvalidSignature, ValueError):
        return False


def transfer_id(recording_id: str, stored_sha256: str) -> str:
    """A transfer's id: stable for the same bytes, so a resumed transfer finds its segments."""
    return f"{recording_id}.{stored_sha256[:16]}"


REPLICA_TRANSFER = "replica."


def replica_transfer_id(sha256: str) -> str:
    """A replica file's transfer id: named by its content (recording ids never end in 64 hex
    after their only dot)."""
    return f"{REPLICA_TRANSFER}{sha256}"


def is_replica_transfer(tid: str) -> bool:
    """Whether a transfer id names a replica file rather than a recording."""
    rest = tid.removeprefix(REPLICA_TRANSFER)
    return rest != tid and len(rest) == 64 and all(c in "0123456789abcdef" for c in rest)


def offsets(size: int, chunk: int) -> list[int]:
    """Every segment offset of a file of `size` bytes (an empty file has one empty segment)."""
    return list(range(0, size, chunk)) or [0]


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()
