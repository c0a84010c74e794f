"""A stand-in for an Axis system controller: OpenStack's own python-swiftclient driving the
box's Body Worn Integration API the way the spec describes (System/Users/Devices objects,
one container per recording, clips, key objects, bookmarks, a GNSS track, Status: Complete).

With an RSA public key it encrypts as the controller does end to end: each clip (and the
GNSS track) with a fresh AES-256-CBC key and IV, the key wrapped with RSA-OAEP into a JSON
key object `{"EncryptedKey", "ContentEncryptionIV", "PublicKeyId"}` stored beside it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from swiftclient.client import Connection

SYSTEM_ID = "6f1f0c3e-5b7a-4c1e-9d3e-2a7b9c0d1e2f"
USER_UUID = "0b7e4c52-4f0e-4a43-a9c4-6d1c2b3a4f5e"
SERIAL = "B8A44F000001"
CONTROLLER = "W800-ACCC8E000001"


def iso(moment: dt.datetime) -> str:
    """RFC 3339 UTC, as the controller writes `...ISO` metadata."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(moment: dt.datetime) -> str:
    """Epoch seconds, as the controller writes `TriggerOnTime` and friends."""
    return str(int(moment.timestamp()))


def connect(url: str, user: str, key: str, cacert: Path, retries: int = 0) -> Connection:
    """A swiftclient connection to the box, verifying its certificate (v1 auth)."""
    return Connection(
        authurl=f"{url}/auth/v1.0",
        user=user,
        key=key,
        auth_version="1",
        cacert=str(cacert),
        retries=retries,
    )


def encrypt(data: bytes, public_key, key_id: str) -> tuple[bytes, bytes]:
    """AES-256-CBC (PKCS#7) under a fresh key; returns (ciphertext, key object bytes)."""
    key, iv = os.urandom(32), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()
    wrapped = public_key.encrypt(
        key,
        rsa_padding.OAEP(
            mgf=rsa_padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
        ),
    )
    key_object = {
        "EncryptedKey": base64.b64encode(wrapped).decode(),
        "ContentEncryptionIV": base64.b64encode(iv).decode(),
        "PublicKeyId": key_id,
    }
    return body, json.dumps(key_object).encode()


def decrypt(body: bytes, key_object: bytes, private_key) -> bytes:
    """What central does with the matching private key: unwrap the AES key, decrypt."""
    spec = json.loads(key_object)
    key = private_key.decrypt(
        base64.b64decode(spec["EncryptedKey"]),
        rsa_padding.OAEP(
            mgf=rsa_padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
        ),
    )
    decryptor = Cipher(
        algorithms.AES(key), modes.CBC(base64.b64decode(spec["ContentEncryptionIV"]))
    ).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


@dataclass
class Clip:
    """One clip of a recording: its file and the span it covers."""

    path: Path
    start: dt.datetime
    stop: dt.datetime


def make_clips(folder: Path, count: int, start: dt.datetime) -> list[Clip]:
    """`count` real, small 2-second MP4 clips of camera SERIAL following each other."""
    from edgebox.clips import make_clip

    made = []
    for number in range(count):
        begin = start + dt.timedelta(seconds=2 * number)
        info = make_clip(
            folder / f"clip{number}.mp4",
            seconds=2,
            pre_event_seconds=0,
            width=160,
            height=96,
            fps=5,
            serial=SERIAL,
            started_at=begin,
        )
        made.append(Clip(info.path, begin, info.stopped_at))
    return made


@dataclass
class Sent:
    """What the controller uploaded for one recording (for the test to check against)."""

    container: str
    clips: dict[str, bytes] = field(default_factory=dict)  # object name -> bytes as sent
    keys: dict[str, bytes] = field(default_factory=dict)
    others: dict[str, bytes] = field(default_factory=dict)  # bookmarks, GNSS track


class Controller:
    """Plays an AXIS W800 system controller against the box."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def register(self, users: dict[str, str] | None = None, devices: list[str] | None = None):
        """System object, then users and cameras, as the BWM does when they are added."""
        self.conn.put_container("System")
        self.conn.put_object(
            "System",
            SYSTEM_ID,
            b"",
            headers={"X-Object-Meta-Systemname": "Depot Nord", "X-Object-Meta-Connectionid": "c-1"},
        )
        self.conn.put_container("Users")
        for uuid, name in (users or {USER_UUID: "Alex Martin"}).items():
            self.conn.put_object(
                "Users",
                uuid,
                b"",
                headers={
                    "X-Object-Meta-Name": name,
                    "X-Object-Meta-Userid": "BADGE-4711",
                    "X-Object-Meta-Active": "True",
                },
            )
        self.conn.put_container("Devices")
        for serial in devices or [SERIAL]:
            self.conn.put_object(
                "Devices",
                serial,
                b"",
                headers={"X-Object-Meta-Name": "Cam 1", "X-Object-Meta-Model": "W110"},
            )

    def recording(
        self,
        clips: list[Clip],
        trigger_on: dt.datetime,
        trigger_off: dt.datetime,
        *,
        user: str = USER_UUID,
        serial: str = SERIAL,
        bookmarks: int = 1,
        gnss: bool = True,
        complete: bool = True,
        public_key=None,
        key_id: str = "central-2026",
    ) -> Sent:
        """Upload one recording container with its clips (and key objects when `public_key`
        is given), bookmarks and GNSS track; mark it Complete unless told not to."""
        name = f"{user}_{serial}_{epoch(trigger_on)}"
        sent = Sent(name)
        self.conn.put_container(
            name,
            headers={
                "X-Container-Meta-Bwcserialnumber": serial,
                "X-Container-Meta-Scuserialnumber": CONTROLLER,
                "X-Container-Meta-Firmwareversion": "11.2.0",
                "X-Container-Meta-Userid": user,
                "X-Container-Meta-Triggeron": "Button",
                "X-Container-Meta-Triggerontime": epoch(trigger_on),
                "X-Container-Meta-Triggerontimeiso": iso(trigger_on),
                "X-Container-Meta-Triggeronlocation": "55.718409 13.221184 5 " + epoch(trigger_on),
                "X-Container-Meta-Bwcmodel": "W110",
                "X-Container-Meta-Status": "Transferring",
            },
        )
        for number, clip in enumerate(clips):
            data = clip.path.read_bytes()
            object_name = f"{clip.start.strftime('%Y%m%d_%H%M%S')}_{1000 + number}.mp4"
            if public_key is not None:
                data, key_object = encrypt(data, public_key, key_id)
                key_name = object_name.rsplit(".", 1)[0] + ".key"
                self.conn.put_object(name, key_name, key_object)
                sent.keys[key_name] = key_object
            self.conn.put_object(
                name,
                object_name,
                data,
                content_length=len(data),
                etag=hashlib.md5(data, usedforsecurity=False).hexdigest(),
                headers={
                    "X-Object-Meta-Starttime": epoch(clip.start),
                    "X-Object-Meta-Starttimeiso": iso(clip.start),
                    "X-Object-Meta-Stoptime": epoch(clip.stop),
                    "X-Object-Meta-Stoptimeiso": iso(clip.stop),
                    "X-Object-Meta-Containertype": "mp4",
                },
            )
            sent.clips[object_name] = data
        for number in range(bookmarks):
            note = f"Suspect left on foot, bookmark {number}".encode()
            bookmark = f"bookmark_{epoch(trigger_on)}_{number}"
            self.conn.put_object(
                name,
                bookmark,
                note,
                headers={
                    "X-Object-Meta-Categoryid": "1",
                    "X-Object-Meta-Categoryname": "Incident",
                    "X-Object-Meta-Tags": f"TriggerOn:Button;Note:{number}",
                    "X-Object-Meta-Starttime": iso(trigger_on),
                },
            )
            sent.others[bookmark] = note
        if gnss:
            track = json.dumps(
                {
                    "CoordinateEntries": [
                        {
                            "LocationWKT": "POINT(13.221184 55.718409)",
                            "SecondsFromStart": 1.0,
                            "Timestamp": iso(trigger_on),
                        }
                    ]
                }
            ).encode()
            gnss_name = f"{clips[0].start.strftime('%Y%m%d_%H%M%S')}_1000_{serial}_gpstrail.json"
            if public_key is not None:
                track, key_object = encrypt(track, public_key, key_id)
                self.conn.put_object(name, gnss_name + ".key", key_object)
                sent.keys[gnss_name + ".key"] = key_object
            self.conn.put_object(name, gnss_name, track, headers={"X-Object-Meta-Filetype": "json"})
            sent.others[gnss_name] = track
        if complete:
            self.complete(name, trigger_off)
        return sent

    def complete(self, name: str, trigger_off: dt.datetime) -> None:
        """The last word on a recording: trigger-off metadata and Status: Complete."""
        self.conn.post_container(
            name,
            headers={
                "X-Container-Meta-Triggeroff": "Button",
                "X-Container-Meta-Triggerofftime": epoch(trigger_off),
                "X-Container-Meta-Triggerofftimeiso": iso(trigger_off),
                "X-Container-Meta-Status": "Complete",
            },
        )
