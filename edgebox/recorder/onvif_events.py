"""ONVIF events as triggers: motion and digital inputs of a camera added by ONVIF.

A thread per such camera finds the event service (GetCapabilities), opens a pull-point
subscription (CreatePullPointSubscription) and pulls its messages (PullMessages, which
the camera holds open up to PULL_SECONDS). A message whose data says a motion or an input
became active (`IsMotion`, `State`, `LogicalState` = true) calls `on_event(topic)`; the
recorder turns that into a trigger by `camera:NAME`. A camera without an event service, or
one that stops answering, is tried again with back-off; it never stops the recording.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from edgebox.recorder.cameras import CameraSpec
from edgebox.recorder.onvif import NS, OnvifError, soap_call

log = logging.getLogger("edgebox.recorder")

PULL_SECONDS = 5
RETRY_START, RETRY_MAX = 5.0, 300.0
TERMINATION = "PT10M"
_EV = {
    **NS,
    "tev": "http://www.onvif.org/ver10/events/wsdl",
    "wsnt": "http://docs.oasis-open.org/wsn/b-2",
    "wsa5": "http://www.w3.org/2005/08/addressing",
}
ACTIVE_ITEMS = ("IsMotion", "State", "LogicalState", "IsInside", "IsTamper")


def active_topics(answer) -> list[str]:
    """The topics of the notifications in a PullMessagesResponse that report something
    becoming active (not ending)."""
    topics = []
    for note in answer.iterfind("wsnt:NotificationMessage", _EV):
        topic = (note.findtext("wsnt:Topic", "", _EV) or "").strip()
        message = note.find("wsnt:Message/tt:Message", _EV)
        if message is None:
            continue
        for item in message.iterfind("tt:Data/tt:SimpleItem", _EV):
            if item.get("Name") in ACTIVE_ITEMS and item.get("Value", "").lower() == "true":
                topics.append(topic or item.get("Name"))
                break
    return topics


class EventPoller:
    """Pulls one camera's ONVIF events and reports the active ones."""

    def __init__(self, spec: CameraSpec, on_event: Callable[[CameraSpec, str], None]):
        self.spec = spec
        self._on_event = on_event
        self.stop_event = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"onvif-{spec.name}", daemon=True)

    def start(self) -> EventPoller:
        """Start pulling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the pull in progress."""
        self.stop_event.set()
        self._thread.join(timeout=PULL_SECONDS + 10)

    def _call(self, url: str, body: str):
        return soap_call(
            url, body, self.spec.username, self.spec.password, timeout=PULL_SECONDS + 5
        )

    def _run(self) -> None:
        wait = RETRY_START
        while not self.stop_event.is_set():
            try:
                self._subscription()
                wait = RETRY_START
            except OnvifError as exc:
                self.error = exc.message
                log.warning("camera %s: ONVIF events: %s", self.spec.name, exc.message)
            self.stop_event.wait(wait)
            wait = min(RETRY_MAX, wait * 2)

    def _subscription(self) -> None:
        capabilities = self._call(
            self.spec.onvif_xaddr,
            "<tds:GetCapabilities><tds:Category>Events</tds:Category></tds:GetCapabilities>",
        )
        service = capabilities.findtext(".//tt:Events/tt:XAddr", "", NS).strip()
        if not service:
            raise OnvifError("the camera offers no event service")
        created = self._call(
            service,
            f'<tev:CreatePullPointSubscription xmlns:tev="{_EV["tev"]}">'
            f"<tev:InitialTerminationTime>{TERMINATION}</tev:InitialTerminationTime>"
            "</tev:CreatePullPointSubscription>",
        )
        pull_point = (
            created.findtext("tev:SubscriptionReference/wsa5:Address", "", _EV).strip() or service
        )
        self.error = None
        while not self.stop_event.is_set():
            answer = self._call(
                pull_point,
                f'<tev:PullMessages xmlns:tev="{_EV["tev"]}">'
                f"<tev:Timeout>PT{PULL_SECONDS}S</tev:Timeout>"
                "<tev:MessageLimit>20</tev:MessageLimit></tev:PullMessages>",
            )
            for topic in active_topics(answer):
                self._on_event(self.spec, topic)
