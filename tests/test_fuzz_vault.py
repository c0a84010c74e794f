"""Property tests of the vault reader: arbitrary bytes and mutated real vault files never
crash it with anything but VaultError, and never decrypt to anything but the original."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from edgebox.errors import KeyAccessError, VaultError
from edgebox.keys import key_id, unwrap_key
from edgebox.vault import HEADER_AREA, MAGIC, Header, Reader, check_structure, read_header
from tests.fuzz import deep_json, json_values
from tests.test_vault import payload, record

PREFIX = struct.Struct(">8sII")
SEGMENT = 4096


class Real(tuple):
    """(recording, its vault file's bytes, folder), with a short repr for failure reports."""

    def __repr__(self) -> str:
        return "<the real vault file>"


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """One real three-and-a-bit-segment vault file, its plaintext and the review key."""
    folder = tmp_path_factory.mktemp("vault")
    data = payload(3 * SEGMENT + 777, seed=18)
    rec = record(folder, data, name="fuzzed", segment_size=SEGMENT)
    return Real((rec, rec.path.read_bytes(), folder))


def _open_with_review_key(path: Path, review, recording_id: str) -> str:
    """The whole road a reader takes: header, wrapped key, MAC, every segment."""
    header = read_header(path)
    wrapped = header.stanza(f"review:{key_id(review.public_key())}")
    data_key = unwrap_key(wrapped, review, recording_id.encode())
    return Reader(path, data_key, header).verify()


def _header_area(body: bytes, area: int = HEADER_AREA) -> bytes:
    raw = PREFIX.pack(MAGIC, area, len(body)) + body
    return raw + b"\x00" * max(0, area - len(raw))


@given(st.binary(max_size=6000))
@example(_header_area(deep_json(100_000), 1 << 20))  # found by this test: RecursionError
@example(_header_area(b'{"core": [], "stanzas": [], "mac": ""}'))
def test_arbitrary_header_bytes_raise_only_vault_error(raw):
    try:
        Header.parse(raw)
    except VaultError as exc:
        assert exc.message


@given(json_values)
def test_any_json_header_body_raises_only_vault_error(body):
    import json

    raw = _header_area(json.dumps(body).encode()[: HEADER_AREA - PREFIX.size])
    with pytest.raises(VaultError):
        Header.parse(raw)


@given(st.binary(max_size=3 * SEGMENT))
def test_arbitrary_files_are_refused_keyless_and_keyed(real, raw):
    _, _, folder = real
    path = folder / "arbitrary.vault"
    path.write_bytes(raw)
    problems = check_structure(path, stored_sha256="0" * 64)
    assert problems and all(isinstance(p, str) for p in problems)
    with pytest.raises(VaultError):
        Reader(path, os.urandom(32)).verify()


STORED = HEADER_AREA + 3 * SEGMENT + 777 + 4 * 16  # the real file's size


@given(st.lists(st.tuples(st.integers(0, STORED - 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_a_mutated_real_file_never_decrypts_wrongly(real, changes):
    rec, original, folder = real
    assert len(original) == STORED
    mutated = bytearray(original)
    for at, xor in changes:
        mutated[at] ^= xor
    if mutated == original:
        return  # two changes of one byte that cancel out
    path = folder / "mutated.vault"
    path.write_bytes(bytes(mutated))
    expected = hashlib.sha256(rec.data).hexdigest()
    try:
        evidence = _open_with_review_key(path, rec.review, "fuzzed")
    except (VaultError, KeyAccessError):
        evidence = None
    # Opening either fails or yields the exact original plaintext (a change to the
    # unauthenticated padding of a stanza's base64, say, may be harmless).
    assert evidence in (None, expected)
    # Keyless, the stored-bytes hash catches every change, wherever it is.
    assert check_structure(path, stored_sha256=rec.summary.stored_sha256)
    if any(mutated[i] != original[i] for i in range(HEADER_AREA, len(original))):
        assert evidence is None, "a changed segment byte went unnoticed"


@given(st.integers(0, STORED - 1))
def test_every_truncation_is_detected(real, cut):
    rec, original, folder = real
    path = folder / "truncated.vault"
    path.write_bytes(original[:cut])
    with pytest.raises(VaultError):
        Reader(path, rec.key).verify()


@given(st.binary(min_size=1, max_size=64))
def test_bytes_appended_are_detected(real, extra):
    rec, original, folder = real
    path = folder / "extended.vault"
    path.write_bytes(original + extra)
    with pytest.raises(VaultError, match="too long"):
        Reader(path, rec.key)


def test_stanza_bodies_are_base64_of_wrapped_keys(real):
    """The mutation test above relies on stanzas being authenticated by HPKE: check that a
    stanza really is what unwrap_key opens (so a mutation there fails, not passes)."""
    rec, _, _ = real
    header = read_header(rec.path)
    review = [s for s in header.stanzas if s["recipient"].startswith("review:")][0]
    assert unwrap_key(base64.b64decode(review["body"]), rec.review, b"fuzzed") == rec.key


def test_a_damaged_stanza_is_a_vault_error_not_a_crash(real):
    """Found by the mutation test: a stanza body that is no longer base64 raised
    binascii.Error out of Header.stanza (a 500 on playback or export)."""
    rec, original, folder = real
    review = [s for s in read_header(rec.path).stanzas if s["recipient"].startswith("review:")][0]
    at = original.index(review["body"].encode()) + 5
    damaged = bytearray(original)
    damaged[at] = ord("*")
    path = folder / "damaged-stanza.vault"
    path.write_bytes(bytes(damaged))
    with pytest.raises(VaultError, match="not base64"):
        _open_with_review_key(path, rec.review, "fuzzed")
