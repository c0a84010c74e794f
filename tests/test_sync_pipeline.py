"""The uplink's pipeline parts: central's answers reach the thread waiting for them."""

from __future__ import annotations

import queue

import pytest

from edgebox.sync.pipeline import Acks


def test_answers_reach_the_transfer_waiting_for_them():
    acks = Acks()
    acks.open("rec-1.aaaa")
    acks.put({"re": "seg", "tid": "rec-2.bbbb", "offset": 0})  # nobody sends rec-2
    acks.put({"re": "seg", "tid": "rec-1.aaaa", "offset": 0})
    acks.put({"re": "meta", "id": "custody:1-2"})
    assert acks.get("rec-1.aaaa", timeout=1)["offset"] == 0
    with pytest.raises(queue.Empty):
        acks.get("rec-1.aaaa", timeout=0.05)
    assert [acks.get(None, timeout=1).get("re") for _ in range(2)] == ["seg", "meta"]
    acks.close("rec-1.aaaa")
    acks.put({"re": "fin", "tid": "rec-1.aaaa"})  # stale once the transfer ended
    assert acks.get(None, timeout=1)["re"] == "fin"
