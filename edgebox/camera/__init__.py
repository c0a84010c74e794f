"""A simulated body-worn camera that pairs with a box and offloads clips to it by tus.

Modules, one per concern:

    errors      the camera's exceptions
    pinning     certificate fetch, fingerprint and pin; pinned sessions; enrollment
    tus         tus metadata, the box's answers sorted by what to do, tus requests
    metadata    the metadata a camera sends with each clip
    state       camera.json and the outbox, written atomically with mode 0600
    sim         CameraSim (pair, record, offload) and run_camera for the CLI
"""

from edgebox.camera.errors import AuthError, CameraError, PairingError, PinningError
from edgebox.camera.metadata import DEFAULT_CATEGORY, DEFAULT_USER
from edgebox.camera.pinning import (
    ENROLL_PATH,
    certificate_sha256,
    fetch_certificate,
    pin_certificate,
)
from edgebox.camera.sim import DEFAULT_CHUNK, DEFAULT_MODEL, CameraSim, UploadResult, run_camera
from edgebox.camera.state import CERT_FILE, OUTBOX, STATE_FILE
from edgebox.camera.tus import (
    TUS_PATH,
    TUS_VERSION,
    decode_tus_metadata,
    encode_tus_metadata,
    rfc3339,
)

__all__ = [
    "CERT_FILE",
    "DEFAULT_CATEGORY",
    "DEFAULT_CHUNK",
    "DEFAULT_MODEL",
    "DEFAULT_USER",
    "ENROLL_PATH",
    "OUTBOX",
    "STATE_FILE",
    "TUS_PATH",
    "TUS_VERSION",
    "AuthError",
    "CameraError",
    "CameraSim",
    "PairingError",
    "PinningError",
    "UploadResult",
    "certificate_sha256",
    "decode_tus_metadata",
    "encode_tus_metadata",
    "fetch_certificate",
    "pin_certificate",
    "rfc3339",
    "run_camera",
]
