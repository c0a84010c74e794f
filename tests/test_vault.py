"""Tests of the vault format: real files under tmp_path, real keys, real byte-level tampering."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import struct
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgebox.errors import VaultError
from edgebox.keys import key_id, unwrap_key, wrap_key
from edgebox.lowlevel import direct_append
from edgebox.vault import (
    HEADER_AREA,
    MAGIC,
    TAG,
    Reader,
    Writer,
    check_structure,
    file_sha256,
    new_header,
    nonce,
    read_header,
    recover_header_journal,
    rewrite_header,
    segment_count,
)

S = 4096  # small segment size used by most tests
STRIDE = S + TAG
SUITES = ["AES-256-GCM", "ChaCha20-Poly1305"]


def payload(size: int, seed: int = 1) -> bytes:
    """Deterministic pseudo-random plaintext."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Rec:
    """A recording written to a real vault file, with everything a test needs to check it."""

    def __init__(self, path, data, key, summary, header, central=None, review=None):
        self.path, self.data, self.key, self.summary, self.header = path, data, key, summary, header
        self.central, self.review = central, review


def stanzas_for(recording_id: str, data_key: bytes):
    """Real HPKE stanzas for a central and a review recipient, plus their private keys."""
    central, review = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    items = [
        {
            "recipient": f"central:{key_id(central.public_key())}",
            "body": base64.b64encode(
                wrap_key(data_key, central.public_key(), recording_id.encode())
            ).decode(),
        },
        {
            "recipient": f"review:{key_id(review.public_key())}",
            "body": base64.b64encode(
                wrap_key(data_key, review.public_key(), recording_id.encode())
            ).decode(),
        },
    ]
    return items, central, review


def record(
    folder: Path,
    data: bytes,
    *,
    name: str = "rec",
    segment_size: int = S,
    suite: str = "AES-256-GCM",
    chunks: list[int] | None = None,
) -> Rec:
    """Write `data` through a Writer (in `chunks`-sized writes, cycled) and finish it."""
    key = os.urandom(32)
    stanzas, central, review = stanzas_for(name, key)
    header = new_header(
        recording_id=name,
        device_id="cam-1",
        plaintext_size=len(data),
        data_key=key,
        stanzas=stanzas,
        suite=suite,
        segment_size=segment_size,
        created_at="2025-01-01T00:00:00Z",
    )
    writer = Writer.create(folder / f"{name}.part", header, key)
    view, position, turn = memoryview(data), 0, 0
    sizes = chunks or [len(data) or 1]
    while position < len(data):
        step = sizes[turn % len(sizes)]
        writer.write(view[position : position + step])
        position += step
        turn += 1
    summary = writer.finish(folder / f"{name}.vault")
    return Rec(folder / f"{name}.vault", data, key, summary, header, central, review)


def mutate(path: Path, offset: int, new: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(new)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def header_body_offset(path: Path, needle: bytes) -> int:
    """Offset in the file of `needle` inside the header's JSON body."""
    raw = path.read_bytes()[:HEADER_AREA]
    at = raw.find(needle)
    assert at > 0 and raw.count(needle) == 1, needle
    return at


# -- round trip ------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("size", [0, 1, S - 1, S, S + 1, 3 * S, 5 * S + 17])
def test_round_trip(tmp_path, suite, size):
    data = payload(size, seed=size)
    rec = record(tmp_path, data, suite=suite)
    segments = max(1, -(-size // S))

    assert not (tmp_path / "rec.part").exists()
    raw = rec.path.read_bytes()
    assert len(raw) == HEADER_AREA + size + TAG * segments
    assert rec.summary.stored_size == len(raw) == rec.header.stored_size
    assert rec.summary.size == size
    assert rec.summary.segments == segments == rec.header.segments
    assert rec.summary.evidence_sha256 == sha(data)
    assert rec.summary.stored_sha256 == sha(raw) == file_sha256(rec.path)
    if size >= 32:
        assert data[:32] not in raw  # the plaintext is not stored in the clear

    header = read_header(rec.path)
    assert header.core == rec.header.core and header.core["suite"] == suite
    reader = Reader(rec.path, rec.key)
    assert reader.verify() == sha(data)
    assert b"".join(reader.read_range(0, size)) == data
    assert b"".join(reader.segment(i) for i in range(segments)) == data
    assert check_structure(rec.path, rec.summary.stored_sha256) == []


@pytest.mark.parametrize("chunks", [[1], [7, 4095, 4097, 1, 8192], [S], [3 * S + 5], [S - 1, 2]])
def test_chunking_does_not_matter(tmp_path, chunks):
    data = payload(4 * S + 333, seed=7)
    rec = record(tmp_path, data, chunks=chunks)
    assert rec.summary.evidence_sha256 == sha(data)
    assert rec.summary.stored_sha256 == file_sha256(rec.path)
    assert b"".join(Reader(rec.path, rec.key).read_range(0, len(data))) == data


def test_default_segment_size_round_trip(tmp_path):
    data = payload(2 * (1 << 20) + 12345, seed=3)
    key = os.urandom(32)
    header = new_header(
        recording_id="big", device_id="cam", plaintext_size=len(data), data_key=key, stanzas=[]
    )
    assert header.segment_size == 1 << 20 and header.core["suite"] == "AES-256-GCM"
    writer = Writer.create(tmp_path / "big.part", header, key)
    for start in range(0, len(data), 300_000):
        writer.write(data[start : start + 300_000])
    summary = writer.finish(tmp_path / "big.vault")
    assert summary.segments == 3
    assert summary.evidence_sha256 == sha(data)
    assert summary.stored_sha256 == file_sha256(tmp_path / "big.vault")
    assert (tmp_path / "big.vault").stat().st_size == HEADER_AREA + len(data) + 3 * TAG
    reader = Reader(tmp_path / "big.vault", key)
    assert reader.verify() == sha(data)
    edge = 1 << 20
    assert b"".join(reader.read_range(edge - 3, edge + 5)) == data[edge - 3 : edge + 5]


def test_format_matches_specification(tmp_path):
    """Decode a file independently from the documented layout, not through Reader."""
    data = payload(2 * S + 10, seed=11)
    for suite, aead in (("AES-256-GCM", AESGCM), ("ChaCha20-Poly1305", ChaCha20Poly1305)):
        rec = record(tmp_path, data, suite=suite, name=f"spec-{suite}")
        raw = rec.path.read_bytes()
        magic, area, length = struct.unpack(">8sII", raw[:16])
        assert (magic, area) == (MAGIC, HEADER_AREA) == (b"EBVAULT\x01", 4096)
        body = raw[16 : 16 + length]
        assert raw[16 + length : area] == b"\x00" * (area - 16 - length)
        parsed = json.loads(body)
        assert body == json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
        core = parsed["core"]
        assert core["version"] == 1 and core["suite"] == suite and core["segment_size"] == S
        assert (
            core["plaintext_size"] == len(data)
            and core["recording_id"] == rec.header.core["recording_id"]
        )
        salt = base64.b64decode(core["salt"])
        assert len(salt) == 16
        canon = json.dumps(core, sort_keys=True, separators=(",", ":")).encode()

        def derive(info: bytes, salt=salt, key=rec.key) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)

        mac_key = derive(b"edgebox-vault-header")
        assert parsed["mac"] == hmac.new(mac_key, canon, hashlib.sha256).hexdigest()
        cipher = aead(derive(b"edgebox-vault-payload"))
        aad = hashlib.sha256(canon).digest()
        plain = b""
        for index in range(3):
            last = index == 2
            blob = raw[area + index * STRIDE : area + (index + 1) * STRIDE]
            iv = index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
            plain += cipher.decrypt(iv, blob, aad)
        assert plain == data
        # Central's stanza opens with HPKE and the recording id as context.
        kid = key_id(rec.central.public_key())
        (stanza,) = [s for s in parsed["stanzas"] if s["recipient"] == f"central:{kid}"]
        wrapped = base64.b64decode(stanza["body"])
        assert len(wrapped) == 32 + 32 + 16  # enc || sealed key
        assert unwrap_key(wrapped, rec.central, rec.header.core["recording_id"].encode()) == rec.key


def test_nonce_and_segment_count():
    assert nonce(0, False) == bytes(12)
    assert nonce(1, True) == bytes(10) + b"\x01\x01"
    assert nonce(258, False) == bytes(9) + b"\x01\x02\x00"
    assert len(nonce(2**80, True)) == 12
    assert segment_count(0, S) == 1
    assert segment_count(1, S) == 1
    assert segment_count(S, S) == 1
    assert segment_count(S + 1, S) == 2


def test_stanza_lookup(tmp_path):
    rec = record(tmp_path, payload(10))
    kid = key_id(rec.review.public_key())
    wrapped = read_header(rec.path).stanza(f"review:{kid}")
    assert unwrap_key(wrapped, rec.review, b"rec") == rec.key
    with pytest.raises(VaultError, match="no key stanza for review:nobody") as err:
        read_header(rec.path).stanza("review:nobody")
    assert err.value.status == 403


def test_new_header_rejects_bad_arguments():
    key = os.urandom(32)
    common = {"recording_id": "r", "device_id": "d", "data_key": key, "stanzas": []}
    with pytest.raises(VaultError, match="unknown suite") as err:
        new_header(plaintext_size=1, suite="DES", **common)
    assert err.value.status == 400
    with pytest.raises(VaultError, match="bad sizes"):
        new_header(plaintext_size=1, segment_size=0, **common)
    with pytest.raises(VaultError, match="bad sizes"):
        new_header(plaintext_size=-1, **common)
    with pytest.raises(VaultError, match="may not replace core fields: plaintext_size, salt"):
        new_header(plaintext_size=1, extra={"salt": "AAAA", "plaintext_size": 2}, **common)
    header = new_header(plaintext_size=1, extra={"camera_serial": "X1"}, **common)
    assert header.core["camera_serial"] == "X1"
    header.check_mac(key)


def test_header_too_large(tmp_path):
    key = os.urandom(32)
    stanzas = [{"recipient": f"central:{i}", "body": "A" * 100} for i in range(60)]
    header = new_header(
        recording_id="r", device_id="d", plaintext_size=5, data_key=key, stanzas=stanzas
    )
    with pytest.raises(VaultError, match="header too large"):
        Writer.create(tmp_path / "r.part", header, key)


def test_create_never_overwrites(tmp_path):
    key = os.urandom(32)
    header = new_header(recording_id="r", device_id="d", plaintext_size=5, data_key=key, stanzas=[])
    (tmp_path / "r.part").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        Writer.create(tmp_path / "r.part", header, key)
    assert (tmp_path / "r.part").read_bytes() == b"precious"


# -- random access -----------------------------------------------------------


def test_read_range_on_odd_boundaries(tmp_path):
    size = 5 * S + 123
    data = payload(size, seed=5)
    rec = record(tmp_path, data)
    reader = Reader(rec.path, rec.key)
    ranges = [
        (0, 1),
        (1, S - 1),
        (S - 1, S + 1),
        (S, 2 * S),
        (3, 4 * S + 5),
        (2 * S + 7, 2 * S + 7),
        (5 * S, size),
        (size - 1, size),
        (size - 5, size + 1000),
        (0, size),
        (4 * S + 1, 5 * S + 1),
        (size, size + 10),
        (S + 11, S + 12),
    ]
    for start, end in ranges:
        assert b"".join(reader.read_range(start, end)) == data[start:end], (start, end)


def test_read_range_decrypts_only_touched_segments(tmp_path):
    rec = record(tmp_path, payload(6 * S, seed=9))
    reader = Reader(rec.path, rec.key)
    touched = []
    original = reader.segment

    def spy(index):
        touched.append(index)
        return original(index)

    reader.segment = spy
    assert b"".join(reader.read_range(2 * S + 5, 3 * S + 1)) == rec.data[2 * S + 5 : 3 * S + 1]
    assert touched == [2, 3]
    touched.clear()
    list(reader.read_range(4 * S, 5 * S))
    assert touched == [4]


def test_segment_out_of_range(tmp_path):
    rec = record(tmp_path, payload(2 * S))
    reader = Reader(rec.path, rec.key)
    for index in (-1, 2):
        with pytest.raises(VaultError, match=f"segment {index} out of range") as err:
            reader.segment(index)
        assert err.value.status == 416


# -- resume, mark and rollback -----------------------------------------------


def start(folder: Path, data: bytes, name: str = "up", suite: str = "AES-256-GCM"):
    key = os.urandom(32)
    header = new_header(
        recording_id=name,
        device_id="cam",
        plaintext_size=len(data),
        data_key=key,
        stanzas=[],
        suite=suite,
        segment_size=S,
    )
    return Writer.create(folder / f"{name}.part", header, key), key


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("garbage", [0, S // 2, STRIDE + 9])
def test_resume_after_abandoned_writer(tmp_path, suite, garbage):
    data = payload(6 * S + 100, seed=21)
    writer, key = start(tmp_path, data, suite=suite)
    writer.write(data[: 3 * S + S // 2])  # three sealed segments and half a segment in memory
    assert writer.durable_offset == 3 * S and writer.offset == 3 * S + S // 2
    writer.sync()
    writer.close()  # crash: the in-memory tail is lost
    part = tmp_path / "up.part"
    if garbage:
        with open(part, "ab") as handle:  # a torn write of a later segment
            handle.write(os.urandom(garbage))

    resumed = Writer.resume(part, key)
    assert resumed.offset == resumed.durable_offset == 3 * S
    assert resumed.offset % S == 0
    assert part.stat().st_size == HEADER_AREA + 3 * STRIDE
    resumed.write(data[resumed.offset :])
    summary = resumed.finish(tmp_path / "up.vault")
    assert summary.evidence_sha256 == sha(data)
    assert summary.stored_sha256 == file_sha256(tmp_path / "up.vault")
    assert Reader(tmp_path / "up.vault", key).verify() == sha(data)


def test_resume_repeatedly_and_from_empty(tmp_path):
    data = payload(4 * S, seed=22)
    writer, key = start(tmp_path, data)
    writer.close()  # only the header was written
    part = tmp_path / "up.part"
    writer = Writer.resume(part, key)
    assert writer.offset == 0
    writer.write(data[: S + 1])
    writer.close()
    writer = Writer.resume(part, key)
    assert writer.offset == S
    writer.write(data[S:])  # all of it, but the last segment stays in memory until finish
    writer.close()
    writer = Writer.resume(part, key)
    assert writer.offset == 3 * S  # the last segment is sealed only by finish
    writer.write(data[3 * S :])
    summary = writer.finish(tmp_path / "up.vault")
    assert summary.evidence_sha256 == sha(data)
    assert summary.stored_sha256 == file_sha256(tmp_path / "up.vault")


def test_resume_of_a_sealed_but_unrenamed_file(tmp_path):
    """A crash between sealing the last segment and the rename: the last segment is redone."""
    data = payload(3 * S, seed=25)
    writer, key = start(tmp_path, data)
    writer.write(data)
    summary = writer.finish(tmp_path / "up.vault")
    os.replace(tmp_path / "up.vault", tmp_path / "up.part")
    writer = Writer.resume(tmp_path / "up.part", key)
    assert writer.offset == 2 * S
    writer.write(data[2 * S :])
    again = writer.finish(tmp_path / "up.vault")
    assert again.evidence_sha256 == summary.evidence_sha256 == sha(data)
    assert again.stored_sha256 == file_sha256(tmp_path / "up.vault")


def test_resume_stops_at_a_damaged_segment(tmp_path):
    data = payload(5 * S, seed=23)
    writer, key = start(tmp_path, data)
    writer.write(data[: 4 * S])
    writer.close()
    part = tmp_path / "up.part"
    flip(part, HEADER_AREA + 2 * STRIDE + 10)
    writer = Writer.resume(part, key)
    assert writer.offset == 2 * S
    writer.write(data[2 * S :])
    summary = writer.finish(tmp_path / "up.vault")
    assert summary.evidence_sha256 == sha(data)
    assert Reader(tmp_path / "up.vault", key).verify() == sha(data)


def test_resume_with_wrong_key(tmp_path):
    data = payload(2 * S, seed=24)
    writer, _ = start(tmp_path, data)
    writer.write(data[:S])
    writer.close()
    before = (tmp_path / "up.part").read_bytes()
    with pytest.raises(VaultError, match="header MAC mismatch: wrong data key"):
        Writer.resume(tmp_path / "up.part", os.urandom(32))
    assert (tmp_path / "up.part").read_bytes() == before


def test_mark_and_rollback_restore_state_exactly(tmp_path):
    data = payload(6 * S + 50, seed=31)
    writer, key = start(tmp_path, data)
    part = tmp_path / "up.part"
    writer.write(data[: S + 100])  # one sealed segment and a partial tail
    mark = writer.mark(hold=True)
    state = (part.read_bytes(), writer.offset, writer.durable_offset)

    bogus = bytes(3 * S)  # a chunk whose checksum fails: crosses several segment boundaries
    writer.write(bogus)
    assert writer.durable_offset == 4 * S
    writer.rollback(mark)
    assert (part.read_bytes(), writer.offset, writer.durable_offset) == state

    mark = writer.mark(hold=True)
    writer.write(b"\xff" * (2 * S))  # rejected again, rolled back to the same mark
    writer.rollback(mark)
    assert (part.read_bytes(), writer.offset, writer.durable_offset) == state

    writer.write(data[S + 100 :])  # the correct bytes
    summary = writer.finish(tmp_path / "up.vault")
    assert summary.evidence_sha256 == sha(data)
    assert summary.stored_sha256 == file_sha256(tmp_path / "up.vault")
    reader = Reader(tmp_path / "up.vault", key)
    assert reader.verify() == sha(data)
    assert b"".join(reader.read_range(0, len(data))) == data


def test_rollback_without_changes_and_at_start(tmp_path):
    data = payload(2 * S + 1, seed=32)
    writer, key = start(tmp_path, data)
    mark = writer.mark()
    writer.rollback(mark)
    writer.write(data[:S])
    writer.rollback(mark)
    assert writer.offset == 0 and (tmp_path / "up.part").stat().st_size == HEADER_AREA
    writer.write(data)
    summary = writer.finish(tmp_path / "up.vault")
    assert summary.evidence_sha256 == sha(data)
    assert summary.stored_sha256 == file_sha256(tmp_path / "up.vault")


def test_writing_past_declared_size_is_refused(tmp_path):
    data = payload(2 * S + 5, seed=41)
    writer, key = start(tmp_path, data)
    writer.write(data[:-2])
    with pytest.raises(VaultError, match="more bytes than the recording's declared size") as err:
        writer.write(b"abc")
    assert err.value.status == 413
    assert writer.offset == len(data) - 2  # nothing of the refused chunk was taken
    writer.write(data[-2:])
    with pytest.raises(VaultError) as err:
        writer.write(b"x")
    assert err.value.status == 413
    summary = writer.finish(tmp_path / "up.vault")
    assert summary.evidence_sha256 == sha(data)


def test_finish_before_complete_is_refused(tmp_path):
    data = payload(3 * S, seed=42)
    writer, key = start(tmp_path, data)
    writer.write(data[: 2 * S + 7])
    message = f"recording incomplete: {2 * S + 7} of {3 * S} bytes"
    with pytest.raises(VaultError, match=message) as err:
        writer.finish(tmp_path / "up.vault")
    assert err.value.status == 409
    assert not (tmp_path / "up.vault").exists() and (tmp_path / "up.part").exists()
    writer.write(data[2 * S + 7 :])
    summary = writer.finish(tmp_path / "up.vault")
    assert summary.evidence_sha256 == sha(data)
    assert Reader(tmp_path / "up.vault", key).verify() == sha(data)


# -- tampering ---------------------------------------------------------------

SIZE = 4 * S + 1000  # four full segments and a short last one


@pytest.fixture
def rec(tmp_path):
    return record(tmp_path, payload(SIZE, seed=99))


def segment_offset(index: int) -> int:
    return HEADER_AREA + index * STRIDE


def test_intact_file_checks_clean(rec):
    assert Reader(rec.path, rec.key).verify() == sha(rec.data)
    assert check_structure(rec.path) == []
    assert check_structure(rec.path, rec.summary.stored_sha256) == []


@pytest.mark.parametrize("index", [0, 2, 4])
def test_flipped_byte_in_segment(rec, index):
    flip(rec.path, segment_offset(index) + 17)
    reader = Reader(rec.path, rec.key)  # sizes and header are still fine
    with pytest.raises(VaultError, match=f"segment {index} fails authentication"):
        reader.verify()
    with pytest.raises(VaultError, match=f"segment {index} fails authentication"):
        b"".join(reader.read_range(index * S, index * S + 1))
    intact = 1 if index != 1 else 0
    assert reader.segment(intact) == rec.data[intact * S : (intact + 1) * S]
    (problem,) = check_structure(rec.path, rec.summary.stored_sha256)
    assert "stored bytes changed" in problem


@pytest.mark.parametrize("index", [1, 4])
def test_flipped_byte_in_tag(rec, index):
    end = segment_offset(index) + STRIDE if index < 4 else rec.path.stat().st_size
    flip(rec.path, end - 3)  # inside the segment's 16-byte tag
    with pytest.raises(VaultError, match=f"segment {index} fails authentication"):
        Reader(rec.path, rec.key).verify()


@pytest.mark.parametrize(
    ("needle", "replacement", "message"),
    [
        (b'"recording_id":"rec"', b'"recording_id":"rex"', "header MAC mismatch"),
        (b'"plaintext_size":', None, "header MAC mismatch"),  # a digit of the size changes
        (b'"mac":"', None, "header MAC mismatch"),  # a hex digit of the MAC changes
        (b'"suite":"AES-256-GCM"', b'"suite":"AES-256-GCX"', "corrupt header (unsupported version"),
        (b'{"core"', b'["core"', "corrupt header"),
    ],
)
def test_flipped_byte_in_header_body(rec, needle, replacement, message):
    at = header_body_offset(rec.path, needle)
    if replacement is None:
        at += len(needle)  # the first character of the value
        old = rec.path.read_bytes()[at : at + 1]
        mutate(rec.path, at, b"7" if old != b"7" else b"8")
    else:
        mutate(rec.path, at, replacement)
    with pytest.raises(VaultError, match=re.escape(message)):
        Reader(rec.path, rec.key)
    problems = check_structure(rec.path, rec.summary.stored_sha256)
    if message == "header MAC mismatch":  # well formed, so without a key the hash must tell
        assert "stored bytes changed" in problems[-1]
        if needle == b'"plaintext_size":':  # the size no longer fits the file either
            assert "file truncated" in check_structure(rec.path)[0]
        else:
            assert check_structure(rec.path) == []
    else:
        assert len(problems) == 1 and message in problems[0]


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (0, "not an EdgeBox vault file (bad magic)"),
        (8, "corrupt header sizes (area 16781312"),  # the area size, 4096 + 2**24
        (15, "corrupt header (Extra data"),  # the body length, one too long: a NUL joins the JSON
        (HEADER_AREA - 1, "corrupt header (bytes after the header body)"),
    ],
)
def test_damaged_header_framing(rec, offset, message):
    if offset == 15:
        assert rec.path.read_bytes()[15] % 2 == 0  # so the flip adds one
    flip(rec.path, offset)
    with pytest.raises(VaultError, match=re.escape(message)):
        Reader(rec.path, rec.key)
    (problem,) = check_structure(rec.path)  # found without the hash or a key
    assert message in problem


def test_altered_stanza_is_caught_only_by_the_stored_hash(rec):
    """Stanzas are outside the MAC by design: the custody chain's stored hash covers them."""
    raw = rec.path.read_bytes()[:HEADER_AREA]
    body = json.loads(raw[16 : 16 + struct.unpack(">I", raw[12:16])[0]])
    stanza = body["stanzas"][0]["body"]
    at = header_body_offset(rec.path, stanza.encode()) + 5
    mutate(rec.path, at, b"A" if raw[at : at + 1] != b"A" else b"B")
    assert Reader(rec.path, rec.key).verify() == sha(rec.data)  # the data key still fits
    assert check_structure(rec.path) == []
    (problem,) = check_structure(rec.path, rec.summary.stored_sha256)
    assert "stored bytes changed" in problem and rec.summary.stored_sha256[:16] in problem


@pytest.mark.parametrize("cut", [2 * STRIDE + 100, 3 * STRIDE, 4 * STRIDE, 4 * STRIDE + 1015])
def test_truncated_file(rec, cut):
    size = segment_offset(0) + cut
    os.truncate(rec.path, size)
    expected = rec.summary.stored_size
    message = f"file truncated: {size} of {expected} bytes ({expected - size} missing)"
    with pytest.raises(VaultError, match=re.escape(message)):
        Reader(rec.path, rec.key)
    assert check_structure(rec.path) == [f"{rec.path.name}: {message}"]
    problems = check_structure(rec.path, rec.summary.stored_sha256)
    assert len(problems) == 2 and "stored bytes changed" in problems[1]


def test_truncated_inside_header(rec):
    os.truncate(rec.path, 1000)
    with pytest.raises(VaultError, match="truncated header"):
        Reader(rec.path, rec.key)
    (problem,) = check_structure(rec.path)
    assert "truncated header (1000 of 4096 bytes)" in problem


def test_swapped_segments(rec):
    raw = bytearray(rec.path.read_bytes())
    one = raw[segment_offset(1) : segment_offset(2)]
    two = raw[segment_offset(2) : segment_offset(3)]
    raw[segment_offset(1) : segment_offset(2)] = two
    raw[segment_offset(2) : segment_offset(3)] = one
    rec.path.write_bytes(raw)
    reader = Reader(rec.path, rec.key)
    for index in (1, 2):
        with pytest.raises(VaultError, match=f"segment {index} fails authentication"):
            reader.segment(index)
    with pytest.raises(VaultError, match="segment 1 fails authentication"):
        reader.verify()
    assert "stored bytes changed" in check_structure(rec.path, rec.summary.stored_sha256)[0]


def test_duplicated_segment(rec):
    raw = bytearray(rec.path.read_bytes())
    raw[segment_offset(3) : segment_offset(4)] = raw[segment_offset(1) : segment_offset(2)]
    rec.path.write_bytes(raw)
    reader = Reader(rec.path, rec.key)
    assert reader.segment(1) == rec.data[S : 2 * S]
    with pytest.raises(VaultError, match="segment 3 fails authentication"):
        reader.verify()


def test_last_segment_cannot_be_replaced_by_a_full_one(rec):
    """Dropping the short last segment and relabelling a full one fails on size and nonce."""
    raw = rec.path.read_bytes()
    os.truncate(rec.path, segment_offset(4))
    with pytest.raises(VaultError, match="file truncated"):
        Reader(rec.path, rec.key)
    short = raw[segment_offset(3) : segment_offset(3) + 1000 + TAG]  # a full one, cut to size
    rec.path.write_bytes(raw[: segment_offset(4)] + short)
    with pytest.raises(VaultError, match="segment 4 fails authentication"):
        Reader(rec.path, rec.key).verify()


def test_extra_segment_appended(rec):
    raw = rec.path.read_bytes()
    with open(rec.path, "ab") as handle:
        handle.write(raw[segment_offset(0) : segment_offset(1)])
    message = f"file too long: {len(raw) + STRIDE} bytes, expected {len(raw)} ({STRIDE} extra)"
    with pytest.raises(VaultError, match=re.escape(message)):
        Reader(rec.path, rec.key)
    assert check_structure(rec.path) == [f"{rec.path.name}: {message}"]


def test_segment_spliced_from_another_recording(tmp_path, rec):
    other = record(tmp_path, payload(SIZE, seed=100), name="other")
    raw = bytearray(rec.path.read_bytes())
    raw[segment_offset(2) : segment_offset(3)] = other.path.read_bytes()[
        segment_offset(2) : segment_offset(3)
    ]
    rec.path.write_bytes(raw)
    with pytest.raises(VaultError, match="segment 2 fails authentication"):
        Reader(rec.path, rec.key).verify()


def test_header_swapped_from_another_recording(tmp_path, rec):
    other = record(tmp_path, payload(SIZE, seed=100), name="other")  # same size: no size hint
    mutate(rec.path, 0, other.path.read_bytes()[:HEADER_AREA])
    assert rec.path.stat().st_size == rec.summary.stored_size
    with pytest.raises(VaultError, match="header MAC mismatch"):
        Reader(rec.path, rec.key)
    # Even with the other recording's key, whose MAC now fits, A's segments do not open.
    reader = Reader(rec.path, other.key)
    with pytest.raises(VaultError, match="segment 0 fails authentication"):
        reader.verify()
    assert check_structure(rec.path) == []  # structurally plausible without the hash...
    (problem,) = check_structure(rec.path, rec.summary.stored_sha256)
    assert problem.startswith(f"{rec.path.name}: stored bytes changed")


def test_header_from_another_recording_with_same_key_fails_on_aad(tmp_path):
    """Two headers MACed under one key still bind segments to their own core (via the AAD)."""
    key = os.urandom(32)
    data = payload(2 * S, seed=5)
    paths = []
    for name in ("a", "b"):
        header = new_header(
            recording_id=name,
            device_id="d",
            plaintext_size=len(data),
            data_key=key,
            stanzas=[],
            segment_size=S,
        )
        writer = Writer.create(tmp_path / f"{name}.part", header, key)
        writer.write(data)
        writer.finish(tmp_path / f"{name}.vault")
        paths.append(tmp_path / f"{name}.vault")
    mutate(paths[0], 0, paths[1].read_bytes()[:HEADER_AREA])
    with pytest.raises(VaultError, match="segment 0 fails authentication"):
        Reader(paths[0], key).verify()


def test_wrong_data_key(rec):
    with pytest.raises(VaultError, match="header MAC mismatch: wrong data key"):
        Reader(rec.path, os.urandom(32))


def test_check_structure_without_key(tmp_path, rec):
    assert check_structure(tmp_path / "gone.vault") == ["gone.vault: file missing"]
    (tmp_path / "junk.vault").write_bytes(b"not a vault at all" * 10)
    (problem,) = check_structure(tmp_path / "junk.vault")
    assert "not an EdgeBox vault file (bad magic)" in problem
    flip(rec.path, segment_offset(1) + 1)  # same size, different bytes
    assert check_structure(rec.path) == []  # only the recorded hash can see this
    (problem,) = check_structure(rec.path, rec.summary.stored_sha256)
    actual = file_sha256(rec.path)
    assert problem == (
        f"{rec.path.name}: stored bytes changed (sha256 {actual[:16]}..., "
        f"recorded {rec.summary.stored_sha256[:16]}...)"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("segment_size", 0),
        ("segment_size", "4096"),
        ("plaintext_size", -1),
        ("plaintext_size", 1.5),
        ("salt", "not base64!"),
        ("recording_id", None),
    ],
)
def test_malformed_core_is_reported_not_crashed_on(tmp_path, rec, field, value):
    header = read_header(rec.path)
    header.core[field] = value
    mutate(rec.path, 0, header.encode())
    (problem,) = check_structure(rec.path)
    assert "corrupt header" in problem and field.split("_")[0] in problem
    with pytest.raises(VaultError, match="corrupt header"):
        Reader(rec.path, rec.key)


# -- header rewrite and its journal ------------------------------------------


def test_rewrite_header_drops_a_stanza(rec):
    before = rec.path.read_bytes()
    old = read_header(rec.path)
    central_only = [s for s in old.stanzas if s["recipient"].startswith("central:")]
    assert len(central_only) == 1 and len(old.stanzas) == 2

    new_hash = rewrite_header(rec.path, central_only)

    after = rec.path.read_bytes()
    assert len(after) == len(before)
    assert after[HEADER_AREA:] == before[HEADER_AREA:]  # segments untouched
    assert after[:HEADER_AREA] != before[:HEADER_AREA]
    assert new_hash == file_sha256(rec.path) == sha(after) != rec.summary.stored_sha256
    header = read_header(rec.path)
    assert header.stanzas == central_only
    assert header.core == old.core and header.mac == old.mac
    kid = key_id(rec.review.public_key())
    with pytest.raises(VaultError, match="no key stanza for review:"):
        header.stanza(f"review:{kid}")
    data_key = unwrap_key(header.stanza(central_only[0]["recipient"]), rec.central, b"rec")
    assert Reader(rec.path, data_key).verify() == sha(rec.data)
    assert not list(rec.path.parent.glob("*.header-journal"))
    assert check_structure(rec.path, new_hash) == []
    assert "stored bytes changed" in check_structure(rec.path, rec.summary.stored_sha256)[0]


def test_rewrite_header_too_large_changes_nothing(rec):
    before = rec.path.read_bytes()
    huge = [{"recipient": f"central:{i}", "body": "A" * 200} for i in range(40)]
    with pytest.raises(VaultError, match="header too large"):
        rewrite_header(rec.path, huge)
    assert rec.path.read_bytes() == before
    assert not list(rec.path.parent.glob("*.header-journal"))


def journal_for(path: Path, raw: bytes, digest: bytes | None = None) -> Path:
    journal = path.with_name(path.name + ".header-journal")
    journal.write_bytes((digest or hashlib.sha256(raw).digest()) + raw)
    return journal


def dropped_review_header(path: Path) -> bytes:
    header = read_header(path)
    header.stanzas = [s for s in header.stanzas if s["recipient"].startswith("central:")]
    return header.encode()


def test_recover_reapplies_a_valid_journal(rec):
    before = rec.path.read_bytes()
    raw = dropped_review_header(rec.path)
    journal = journal_for(rec.path, raw)
    mutate(rec.path, 0, raw[:700] + b"\x00" * 300)  # the crash tore the header write itself

    assert recover_header_journal(rec.path.parent) == [rec.path]

    after = rec.path.read_bytes()
    assert after[:HEADER_AREA] == raw
    assert after[HEADER_AREA:] == before[HEADER_AREA:]
    assert not journal.exists()
    assert len(read_header(rec.path).stanzas) == 1
    assert Reader(rec.path, rec.key).verify() == sha(rec.data)


@pytest.mark.parametrize("damage", ["torn", "bad digest", "empty", "too long", "not a header"])
def test_recover_discards_a_bad_journal(rec, damage):
    before = rec.path.read_bytes()
    raw = dropped_review_header(rec.path)
    if damage == "torn":
        journal = journal_for(rec.path, raw[:1500], hashlib.sha256(raw).digest())
    elif damage == "bad digest":
        journal = journal_for(rec.path, raw, hashlib.sha256(b"other").digest())
    elif damage == "empty":
        journal = rec.path.with_name(rec.path.name + ".header-journal")
        journal.write_bytes(b"")
    elif damage == "too long":  # checksummed, but would overwrite segment bytes
        journal = journal_for(rec.path, raw + b"\x00" * 100)
    else:
        journal = journal_for(rec.path, b"\x00" * HEADER_AREA)

    assert recover_header_journal(rec.path.parent) == []

    assert not journal.exists()
    assert rec.path.read_bytes() == before
    assert Reader(rec.path, rec.key).verify() == sha(rec.data)


def test_recover_ignores_journal_without_target(tmp_path):
    raw = new_header(
        recording_id="x", device_id="d", plaintext_size=1, data_key=os.urandom(32), stanzas=[]
    ).encode()
    journal = journal_for(tmp_path / "missing.vault", raw)
    assert recover_header_journal(tmp_path) == []
    assert not journal.exists() and not (tmp_path / "missing.vault").exists()


def test_recover_handles_several_files(tmp_path):
    one = record(tmp_path, payload(S + 1, seed=1), name="one")
    two = record(tmp_path, payload(S + 2, seed=2), name="two")
    raw_one = dropped_review_header(one.path)
    journal_for(one.path, raw_one)
    journal_for(two.path, dropped_review_header(two.path)[:10])
    two_before = two.path.read_bytes()
    assert recover_header_journal(tmp_path) == [one.path]
    assert one.path.read_bytes()[:HEADER_AREA] == raw_one
    assert two.path.read_bytes() == two_before
    assert not list(tmp_path.glob("*.header-journal"))


def test_rewritten_file_copies_verify(tmp_path, rec):
    """A sealed copy moved elsewhere still verifies with the central key alone."""
    header = read_header(rec.path)
    central = [s for s in header.stanzas if s["recipient"].startswith("central:")]
    new_hash = rewrite_header(rec.path, central)
    copy = tmp_path / "elsewhere" / "copy.vault"
    copy.parent.mkdir()
    shutil.copyfile(rec.path, copy)
    assert file_sha256(copy) == new_hash
    wrapped = read_header(copy).stanzas[0]["body"]
    data_key = unwrap_key(base64.b64decode(wrapped), rec.central, b"rec")
    assert Reader(copy, data_key).verify() == rec.summary.evidence_sha256


# -- memory ------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["warm", "empty"])
def test_writer_memory_stays_bounded(tmp_path, monkeypatch, pool):
    """A running box's staging pool is warm: the writer then adds about 5 MiB whatever the
    size; the first upload of a process also allocates its two staging buffers."""
    monkeypatch.setattr(direct_append, "_pools", {})  # a pool of its own, warm or empty
    staging_pool = direct_append.pool_for((1 << 20) + TAG)  # the default segment and tag
    if pool == "warm":
        buffers = [staging_pool.take(), staging_pool.take()]
        for buffer in buffers:
            staging_pool.give(buffer)
    staging = 0 if pool == "warm" else 2 * staging_pool.size
    total, chunk = 64 << 20, 1 << 20
    key = os.urandom(32)
    header = new_header(
        recording_id="mem", device_id="cam", plaintext_size=total, data_key=key, stanzas=[]
    )
    expected = hashlib.sha256()
    block = bytearray(os.urandom(chunk))
    tracemalloc.start()
    try:
        writer = Writer.create(tmp_path / "mem.part", header, key)
        for index in range(total // chunk):
            block[:8] = index.to_bytes(8, "big")  # every chunk differs
            expected.update(block)
            writer.write(block)
        summary = writer.finish(tmp_path / "mem.vault")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Measured ~4.2 MiB besides the staging buffers: the tail, a copy of the caller's mutable
    # buffer, and the blocks referenced by the two hash updates that may be queued.
    assert peak < 6 * chunk + staging, f"peak traced memory {peak} bytes"
    assert len(staging_pool._free) == 2  # given back, and reused by the next upload
    assert summary.evidence_sha256 == expected.hexdigest()
    assert summary.stored_sha256 == file_sha256(tmp_path / "mem.vault")
    assert summary.segments == 64


def test_handed_over_buffers_store_the_same_bytes_as_copied_ones(tmp_path):
    """Fresh bytearrays handed over (as ingest's reads are) are hashed and sealed as they are
    and give the same file as bytearrays the writer copies, which their owner may reuse
    right after `write` (zeroed here) without changing what is stored."""
    data = os.urandom(3 * S + 777)
    sizes = [S + 5, 1000, 2 * S, 1]
    keys = {}
    for name, handed in (("copied", False), ("handed", True)):
        writer, keys[name] = start(tmp_path, data, name)
        position, turn = 0, 0
        while position < len(data):
            block = bytearray(data[position : position + sizes[turn % len(sizes)]])
            writer.write(block, handed_over=handed)
            position, turn = position + len(block), turn + 1
            if not handed:
                block[:] = bytes(len(block))  # the owner reuses its buffer
        summary = writer.finish(tmp_path / f"{name}.vault")
        assert summary.evidence_sha256 == hashlib.sha256(data).hexdigest()
        assert Reader(tmp_path / f"{name}.vault", keys[name]).verify() == summary.evidence_sha256


@pytest.mark.parametrize("segment_mib", [3, 16])
def test_segments_larger_than_the_default_staging_buffer(tmp_path, segment_mib):
    """vault.segment_size may be set up to 16 MiB: the writer's staging buffers grow to hold
    two such segments, and the file is the same as ever."""
    size = segment_mib << 20
    data = payload(2 * size + size // 2 + 5, seed=40)
    key = os.urandom(32)
    header = new_header(
        recording_id="big",
        device_id="cam",
        plaintext_size=len(data),
        data_key=key,
        stanzas=[],
        segment_size=size,
    )
    writer = Writer.create(tmp_path / "big.part", header, key)
    for offset in range(0, len(data), 3 << 20):
        writer.write(data[offset : offset + (3 << 20)])
        writer.sync()
    summary = writer.finish(tmp_path / "big.vault")
    assert summary.evidence_sha256 == sha(data) and summary.segments == 3
    assert summary.stored_sha256 == file_sha256(tmp_path / "big.vault")
    assert Reader(tmp_path / "big.vault", key).verify() == sha(data)
