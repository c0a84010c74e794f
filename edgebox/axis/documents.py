"""The box's own objects in `System/` (Capabilities.json, Categories.json) and the connection
file an AXIS Body Worn Manager imports.

Capabilities follow the spec's three groups (`Read`, `Store`, `StoreAndRead`). Every
capability declared is one the box keeps: `StoreSignedVideo` because the vault stores the
bytes exactly as received (signatures inside the video survive untouched).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import load_pem_x509_certificate

from edgebox import __version__
from edgebox.errors import EdgeboxError

CAPABILITIES = {
    "Read": {"ReadCategories": True},
    "Store": {
        "StoreBookmarks": True,
        "StoreRejectedContent": True,
        "StoreUserIDKey": True,
        "StoreSignedVideo": True,
        "StoreGNSSTrackRecording": True,
    },
    "StoreAndRead": {"StoreReadSystemID": True},
}
CONNECTION_FILE_VERSION = "1.0"
MAX_CONNECTION_FILE = 64 * 1024
_KEY_ID = re.compile(r"^[\w.:-]{1,128}$")


def _json_bytes(document) -> bytes:
    return json.dumps(document, indent=2, sort_keys=False).encode()


def capabilities() -> bytes:
    """System/Capabilities.json as served."""
    return _json_bytes(CAPABILITIES)


def categories(names: str) -> bytes:
    """System/Categories.json: the `axis.categories` config as [{"Id": ..., "Name": ...}]
    (the Id is the name's position, stable as long as the list is only appended to)."""
    listed = [n.strip() for n in names.split(",") if n.strip()]
    return _json_bytes([{"Id": str(i), "Name": name} for i, name in enumerate(listed, start=1)])


def etag(body: bytes) -> str:
    """Swift's ETag: the md5 of the object, in hex (a checksum here, not security)."""
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def rsa_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """An RSA public key (PEM) of at least 2048 bits for end-to-end encryption, or a clear error."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise EdgeboxError("the public key is not a PEM public key", status=400) from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise EdgeboxError("end-to-end encryption needs an RSA public key of 2048 bits or more")
    return key


def connection_file(
    *,
    site: str,
    token_uris: list[str],
    certificate_pem: bytes,
    username: str,
    key: str,
    container_type: str = "mp4",
    public_key_pem: bytes | None = None,
    public_key_id: str | None = None,
) -> dict:
    """The connection file (spec: Connection API) for one Axis account of this box."""
    if container_type not in ("mp4", "mkv"):
        raise EdgeboxError("container type must be mp4 or mkv", status=400)
    if not 0 < len(site) <= 64:
        raise EdgeboxError("the site name must be 1-64 characters", status=400)
    if not 0 < len(token_uris) <= 10 or any(len(u) > 512 for u in token_uris):
        raise EdgeboxError("give 1-10 token URIs of at most 512 characters", status=400)
    cert = load_pem_x509_certificate(certificate_pem)
    document = {
        "ConnectionFileVersion": CONNECTION_FILE_VERSION,
        "SiteName": site,
        "ApplicationName": "EdgeBox",
        "ApplicationVersion": __version__,
        "ContentDestinationAsNTPServer": False,
        "AuthenticationTokenURI": token_uris,
        "HTTPSCertificate": [
            base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        ],
        "BlobAPIKey": key,
        "BlobAPIUserName": username,
        "ContainerType": container_type,
        "FullStoreAndReadSupport": False,
        "WantEncryption": public_key_pem is not None,
    }
    if public_key_pem is not None:
        rsa_public_key(public_key_pem)
        if not public_key_id or not _KEY_ID.match(public_key_id):
            raise EdgeboxError(
                "end-to-end encryption needs a public key id of 1-128 letters, digits, '.:_-'",
                status=400,
            )
        document["PublicKey"] = base64.b64encode(public_key_pem).decode()
        document["PublicKeyId"] = public_key_id
    if len(json.dumps(document)) > MAX_CONNECTION_FILE:
        raise EdgeboxError("the connection file would exceed 64 kB", status=400)
    return document
