"""A small certificate authority for a demo or lab broker: CA, server and client certificates.

Production fleets use the organisation's own PKI; this exists so that `edgebox demo`
runs the whole loop over TLS with client certificates, as a real deployment does.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgebox.keys import pem_private, write_private
from edgebox.lowlevel.durable import atomic_write

_PEM = Encoding.PEM


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class LabCA:
    """A CA whose files live in one folder: `ca.crt`, and `<name>.crt` / `<name>.key` per issue."""

    def __init__(self, folder: Path, days: int = 825):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.days = days
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name("EdgeBox lab CA")
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path = self.folder / "ca.crt"
        atomic_write(self.ca_path, self.cert.public_bytes(_PEM))

    def issue(self, common_name: str, *, server: bool = False) -> tuple[Path, Path]:
        """A certificate for a client (CN = MQTT user name) or for a server on 127.0.0.1."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=self.days))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.folder / f"{common_name}.crt"
        key_path = self.folder / f"{common_name}.key"
        atomic_write(cert_path, cert.public_bytes(_PEM))
        write_private(key_path, pem_private(key))
        return cert_path, key_path
