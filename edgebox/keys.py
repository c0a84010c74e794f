"""Box keys: Ed25519 identity, TLS certificate, central's recipient keys, the review key.

Layout under `<data_dir>/keys/`:

- `identity.key` / `identity.pub`: the box's Ed25519 signing key (custody checkpoints).
- `tls.key` / `tls.crt`: the self-signed certificate cameras pin at pairing.
- `central/<key_id>.pub`: central's X25519 public keys; `central/active` names the current one.
- `review.pub` and `review-slots/<name>.json`: the box review key; its private half
  exists on disk only encrypted under an argon2id key derived from a supervisor's
  secret, one slot per supervisor, and is unlocked in memory only.
- `ingest.key`: wraps the data keys of unfinished uploads so they can resume after
  a crash (see docs/vault-format.md, "Resuming").
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from argon2.low_level import Type, hash_secret_raw
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from edgebox.errors import N_, KeyAccessError, NotFound
from edgebox.lowlevel.durable import atomic_write, write_private

HPKE_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
HPKE_NAME = "HPKE-X25519-SHA256-AES256GCM"
ARGON2 = {"time_cost": 3, "memory_cost": 64 * 1024, "parallelism": 1}
_SLOT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def key_id(public: X25519PublicKey | Ed25519PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex digits of its SHA-256."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def x25519_public_from_file(path: Path) -> X25519PublicKey:
    """Read an X25519 public key from PEM, or from 32 raw bytes in base64 or hex."""
    data = Path(path).read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
            if not isinstance(key, X25519PublicKey):
                raise ValueError("not an X25519 key")
            return key
        text = data.strip().decode()
        raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        return X25519PublicKey.from_public_bytes(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyAccessError(f"{path}: not an X25519 public key ({exc})", status=400) from None


def x25519_private_from_file(path: Path) -> X25519PrivateKey:
    """Read an X25519 private key from an unencrypted PEM file."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyAccessError(f"{path}: cannot read private key ({exc})", status=400) from None
    if not isinstance(key, X25519PrivateKey):
        raise KeyAccessError(f"{path}: not an X25519 private key", status=400)
    return key


def pem_private(key) -> bytes:
    """Serialise a private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_public(key) -> bytes:
    """Serialise a public key as SubjectPublicKeyInfo PEM."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_review_slot(name: str, secret: str) -> None:
    """Refuse a bad supervisor slot name or a weak secret (before anything is written)."""
    if not _SLOT_NAME.match(name):
        raise KeyAccessError(f"invalid slot name {name!r}", status=400)
    if len(secret.strip()) < 8:
        raise KeyAccessError(
            "a review secret must have at least 8 characters besides spaces", status=400
        )


def wrap_key(data_key: bytes, public: X25519PublicKey, context: bytes) -> bytes:
    """HPKE-seal a data key to a recipient; `context` (the recording id) binds it."""
    return HPKE_SUITE.encrypt(data_key, public, info=b"edgebox-vault-key:" + context)


def unwrap_key(wrapped: bytes, private: X25519PrivateKey, context: bytes) -> bytes:
    """Open an HPKE-sealed data key, or raise KeyAccessError."""
    try:
        return HPKE_SUITE.decrypt(wrapped, private, info=b"edgebox-vault-key:" + context)
    except (InvalidTag, ValueError):
        raise KeyAccessError("the wrapped data key does not open with this key") from None


def generate_tls_certificate(box_id: str, identity_hosts: list[str]) -> tuple[bytes, bytes]:
    """A self-signed ECDSA certificate for the box's HTTPS, valid ten years; (key PEM, cert PEM)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgebox {box_id}")])
    alt: list[x509.GeneralName] = []
    for host in identity_hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return pem_private(key), cert.public_bytes(serialization.Encoding.PEM)


def certificate_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER form, hex: what a camera pins."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex()


def _derive(secret: str, salt: bytes) -> bytes:
    return hash_secret_raw(secret.encode(), salt, hash_len=32, type=Type.ID, **ARGON2)


@dataclass
class Keyring:
    """The keys of one box, read from its `keys/` folder."""

    root: Path

    # -- creation -----------------------------------------------------------
    @classmethod
    def create(cls, root: Path, box_id: str, hosts: list[str] | None = None) -> Keyring:
        """Make a new box identity, TLS certificate, review key pair and ingest key."""
        root = Path(root)
        if (root / "identity.key").exists():
            raise KeyAccessError(f"{root} already holds a box identity", status=409)
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        identity = Ed25519PrivateKey.generate()
        write_private(root / "identity.key", pem_private(identity))
        atomic_write(root / "identity.pub", pem_public(identity.public_key()))
        names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), f"{box_id}.local"]
        tls_key, tls_cert = generate_tls_certificate(
            box_id, list(dict.fromkeys(names + (hosts or [])))
        )
        write_private(root / "tls.key", tls_key)
        atomic_write(root / "tls.crt", tls_cert)
        write_private(root / "ingest.key", secrets.token_bytes(32))
        ring = cls(root)
        review = X25519PrivateKey.generate()
        atomic_write(root / "review.pub", pem_public(review.public_key()))
        ring._pending_review = review  # held in memory until the first slot is added
        return ring

    # -- identity -----------------------------------------------------------
    def identity(self) -> Ed25519PrivateKey:
        """The box's Ed25519 signing key."""
        key = serialization.load_pem_private_key((self.root / "identity.key").read_bytes(), None)
        assert isinstance(key, Ed25519PrivateKey)
        return key

    def identity_public(self) -> Ed25519PublicKey:
        """The box's Ed25519 public key."""
        key = serialization.load_pem_public_key((self.root / "identity.pub").read_bytes())
        assert isinstance(key, Ed25519PublicKey)
        return key

    @property
    def tls_cert(self) -> Path:
        """Path of the box's TLS certificate."""
        return self.root / "tls.crt"

    @property
    def tls_key(self) -> Path:
        """Path of the box's TLS private key."""
        return self.root / "tls.key"

    def web_secret(self) -> bytes:
        """The key that signs web session cookies (made on first use, owner-only)."""
        path = self.root / "web-session.key"
        if not path.exists():
            write_private(path, secrets.token_bytes(32))
        return path.read_bytes()

    def ingest_key(self) -> bytes:
        """The 32-byte key that wraps resume keys of unfinished uploads."""
        return (self.root / "ingest.key").read_bytes()

    # -- central ------------------------------------------------------------
    def import_central(self, public: X25519PublicKey) -> str:
        """Store central's public key as the active recipient; returns its key id. A key that
        cannot receive a wrapped data key (a low-order point such as all zeros) is refused."""
        try:
            wrap_key(secrets.token_bytes(32), public, b"import-check")
        except ValueError:
            raise KeyAccessError(
                "not a usable X25519 public key (a low-order point): nothing imported", status=400
            ) from None
        kid = key_id(public)
        folder = self.root / "central"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{kid}.pub", pem_public(public))
        self.activate_central(kid)
        return kid

    def active_central_id(self) -> str | None:
        """The key id new recordings are wrapped to, None before any import."""
        try:
            return (self.root / "central" / "active").read_text().strip()
        except FileNotFoundError:
            return None

    def activate_central(self, kid: str | None) -> None:
        """Make an imported central key the active recipient (None: none is)."""
        active = self.root / "central" / "active"
        if kid is None:
            active.unlink(missing_ok=True)
        else:
            atomic_write(active, (kid + "\n").encode())

    def central(self) -> tuple[str, X25519PublicKey]:
        """The active central recipient key as (key id, key)."""
        kid = self.active_central_id()
        if kid is None:
            raise NotFound("no central key imported; run `edgebox keys import-central FILE`")
        return kid, x25519_public_from_file(self.root / "central" / f"{kid}.pub")

    # -- review key ---------------------------------------------------------
    def review_public(self) -> tuple[str, X25519PublicKey]:
        """The box review key's public half as (key id, key)."""
        key = x25519_public_from_file(self.root / "review.pub")
        return key_id(key), key

    def review_slots(self) -> list[str]:
        """Names of the supervisor slots that can unlock the review key."""
        folder = self.root / "review-slots"
        return sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []

    def add_review_slot(
        self, name: str, secret: str, unlocked: X25519PrivateKey | None = None
    ) -> None:
        """Let a supervisor unlock the review key with `secret` (needs it unlocked, or fresh);
        an existing slot is never replaced."""
        check_review_slot(name, secret)
        if (self.root / "review-slots" / f"{name}.json").exists():
            raise KeyAccessError(
                f"supervisor slot {name!r} already exists; choose another name", status=409
            )
        private = unlocked or getattr(self, "_pending_review", None)
        if private is None:
            raise KeyAccessError("unlock the review key before adding a supervisor")
        salt = secrets.token_bytes(16)
        nonce = secrets.token_bytes(12)
        raw = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        body = AESGCM(_derive(secret, salt)).encrypt(nonce, raw, name.encode())
        slot = {
            "kdf": "argon2id",
            **ARGON2,
            "salt": base64.b64encode(salt).decode(),
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(body).decode(),
        }
        write_private(self.root / "review-slots" / f"{name}.json", json.dumps(slot).encode())

    def unlock_review(self, secret: str, name: str | None = None) -> X25519PrivateKey:
        """Open the review key with a supervisor secret (any slot unless `name` is given)."""
        return self.unlock_review_slot(secret, name)[1]

    def unlock_review_slot(
        self, secret: str, name: str | None = None
    ) -> tuple[str, X25519PrivateKey]:
        """(slot name, review key): which supervisor slot `secret` opened, and the key."""
        names = [name] if name else self.review_slots()
        for slot_name in names:
            path = self.root / "review-slots" / f"{slot_name}.json"
            if not path.exists():
                continue
            slot = json.loads(path.read_text())
            params = {k: slot[k] for k in ("time_cost", "memory_cost", "parallelism")}
            key = hash_secret_raw(
                secret.encode(), base64.b64decode(slot["salt"]), hash_len=32, type=Type.ID, **params
            )
            try:
                raw = AESGCM(key).decrypt(
                    base64.b64decode(slot["nonce"]),
                    base64.b64decode(slot["ciphertext"]),
                    slot_name.encode(),
                )
            except InvalidTag:
                continue
            return slot_name, X25519PrivateKey.from_private_bytes(raw)
        raise KeyAccessError(N_("wrong review secret"))
