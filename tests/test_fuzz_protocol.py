"""Property tests of what central accepts: malformed sync messages (any topic, any payload,
well-shaped messages with hostile fields) are refused with a logged reason or an answer,
never an exception escaping the receiver, never a stored file."""

from __future__ import annotations

import base64
import math

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import example, given
from hypothesis import strategies as st

from edgebox import custody
from edgebox.central.receiver import Receiver
from edgebox.sync import protocol
from edgebox.sync.protocol import ProtocolError
from tests.fuzz import deep_json, json_scalars, json_values

BOX = "van-fuzz"
HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)


class Central:
    """A real Receiver on a real store, answers collected in a list."""

    def __init__(self, store):
        self.store = store
        self.answers: list[tuple[str, bytes]] = []
        self.receiver = Receiver(
            store, lambda topic, payload: self.answers.append((topic, payload))
        )
        self.identity = Ed25519PrivateKey.generate()
        raw = self.identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public = base64.b64encode(raw).decode()

    def rejections(self) -> int:
        return self.receiver.index.one("SELECT COUNT(*) AS n FROM rejections")["n"]

    def feed(self, topic: str, payload: bytes) -> None:
        """Hand one message over; it must be answered or logged as refused, never raise."""
        before_rejections, before_answers = self.rejections(), len(self.answers)
        self.receiver.handle(topic, payload)  # no defer: the costly part runs here too
        assert self.rejections() > before_rejections or len(self.answers) > before_answers
        for answer_topic, answer in self.answers[before_answers:]:
            assert answer_topic.endswith("/ack")
            assert isinstance(protocol.decode(answer), dict)
        stored = [p for p in (self.store / "boxes").rglob("*") if p.is_file()]
        stored += [p for p in (self.store / "replicas").rglob("*") if p.is_file()]
        assert stored == [], f"a refused message left {stored}"
        assert self.receiver.index.one("SELECT COUNT(*) AS n FROM recordings")["n"] == 0


@pytest.fixture(scope="module")
def central(tmp_path_factory):
    made = Central(tmp_path_factory.mktemp("central"))
    yield made
    made.receiver.index.close()


topics = st.one_of(
    st.text(max_size=80),
    st.builds(
        "{}/{}/{}".format,
        st.just(protocol.PREFIX),
        st.sampled_from([BOX, "other", "", "../x"]),
        st.sampled_from(
            ["meta", "status", "ack", "file/t.1/init", "file/t.1/fin", "file/t/seg/0/" + "a" * 64]
        ),
    ),
)
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(protocol.encode),
    st.just(deep_json(50_000)),
)


@given(topics, payloads)
def test_any_topic_and_payload_is_refused_cleanly(central, topic, payload):
    central.feed(topic, payload)


def _entry(seq, fields: dict, honest_hash: bool) -> dict:
    entry = {
        "seq": seq,
        "ts": "2026-01-01T00:00:00Z",
        "event": "x",
        "actor": "a",
        "subject": None,
        "details": {},
        "prev_hash": "0" * 64,
        **fields,
    }
    try:
        entry["hash"] = custody.entry_hash(entry) if honest_hash else "f" * 64
    except (TypeError, ValueError):
        entry["hash"] = "f" * 64
    return entry


seqs = st.one_of(
    st.integers(-5, 2**70), st.floats(), st.text(max_size=5), st.none(), st.just(math.inf)
)
entries = st.builds(
    _entry,
    seqs,
    st.dictionaries(
        st.sampled_from(["ts", "event", "prev_hash", "details"]), json_values, max_size=2
    ),
    st.booleans(),
)
checkpoints = st.lists(
    st.one_of(
        json_scalars,
        st.fixed_dictionaries(
            {
                "seq": seqs,
                "head_hash": HEX64,
                "ts": st.text(max_size=5),
                "key_id": st.text(),
                "signature": st.text(max_size=10),
            }
        ),
    ),
    max_size=3,
)


@given(
    st.one_of(st.lists(entries, max_size=4), json_values),
    st.one_of(checkpoints, json_values),
    st.text(max_size=8),
)
@example([], [1], "c")  # found by this test: a checkpoint that is no object crashed central
@example([_entry(1e400, {}, True)], [], "i")  # and a seq past a float's range,
@example([_entry(-(2**70), {}, True)], [], "s")  # a seq past SQLite's integers,
@example([_entry(1, {"details": {"a": 1}}, True)], [], "d")  # details that are no text
def test_hostile_custody_messages_are_refused(central, entry_list, checkpoint_list, suffix):
    message = {
        "id": f"custody:{suffix}",
        "type": "custody",
        "box": BOX,
        "identity": central.public,
        "entries": entry_list,
        "checkpoints": checkpoint_list,
    }
    central.feed(protocol.meta_topic(BOX), protocol.encode(message))


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "box": st.sampled_from([BOX, "other"]) | json_scalars,
            "tid": st.just("r1.0123456789abcdef") | json_scalars,
            "recording_id": st.just("r1") | json_values,
            "size": st.integers(-1, 2**41) | json_scalars,
            "chunk": st.integers(0, 2**25) | json_scalars,
            "sha256": HEX64 | json_scalars,
            "manifest": json_values,
            "signature": json_values,
            "kind": st.just("replica") | json_scalars,
            "path": json_values,
        },
    ),
    st.sampled_from(["r1.0123456789abcdef", "replica." + "ab" * 32]),
)
def test_hostile_file_inits_are_refused(central, fields, tid):
    message = {"identity": central.public, **fields}
    central.feed(protocol.init_topic(BOX, tid), protocol.encode(message))


@given(st.binary(max_size=300), HEX64, st.integers(0, 2**40), json_values)
def test_segments_and_fins_of_unknown_transfers_are_refused(central, data, sha, offset, fin):
    central.feed(protocol.segment_topic(BOX, "nothing.here", offset, sha), data)
    central.feed(protocol.fin_topic(BOX, "nothing.here"), protocol.encode({"fin": fin}))


@given(st.text(max_size=200))
def test_parse_topic_answers_parts_or_protocol_error(topic):
    try:
        parts = protocol.parse_topic(topic)
    except ProtocolError as exc:
        assert exc.message.startswith("not a sync topic")
    else:
        assert protocol.PREFIX in topic and parts["box"] in topic


@given(st.binary(max_size=300) | st.just(deep_json(100_000)))
def test_decode_answers_an_object_or_protocol_error(payload):
    try:
        assert isinstance(protocol.decode(payload), dict)
    except ProtocolError:
        pass
