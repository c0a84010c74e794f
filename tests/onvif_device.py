"""A small ONVIF device for tests: WS-Discovery over UDP and three SOAP calls over HTTP.

No ONVIF camera can run here, so this stands in for one (a test double, and it says so):
it answers a Probe with a ProbeMatch naming its device service, and GetCapabilities,
GetProfiles and GetStreamUri as real cameras do (SOAP 1.2), checking the WS-Security
UsernameToken digest and answering a NotAuthorized fault to wrong credentials. Its stream
URI is a real RTSP camera's (tests/rtsp_server.py). Both servers listen on 127.0.0.1 only;
discovery is probed directly at its UDP port (a multicast group on loopback is not
dependable in containers).
"""

from __future__ import annotations

import base64
import hashlib
import queue
import socket
import threading
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

from edgebox.recorder.onvif import NS

_WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
_TEV = "http://www.onvif.org/ver10/events/wsdl"
_WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{s}" xmlns:a="{a}" '
    'xmlns:d="{d}" xmlns:tds="{tds}" xmlns:trt="{trt}" xmlns:tt="{tt}">{{header}}'
    "<s:Body>{{body}}</s:Body></s:Envelope>"
).format(**NS)


class OnvifDevice:
    """The device's UDP discovery responder and HTTP service, each on a thread."""

    def __init__(self, stream_uri: str, username: str, password: str, name: str = "Gate"):
        self.stream_uri, self.username, self.password, self.name = (
            stream_uri,
            username,
            password,
            name,
        )
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.xaddr = f"http://127.0.0.1:{self.http.server_port}/onvif/device_service"
        self.endpoint = f"urn:uuid:{uuid.uuid4()}"
        self.calls: list[str] = []
        self.events: queue.Queue = queue.Queue()  # topics PullMessages hands out

    @property
    def discovery_address(self) -> tuple[str, int]:
        """Where to send a directed Probe."""
        return self.udp.getsockname()

    def start(self) -> OnvifDevice:
        """Serve discovery and SOAP."""
        threading.Thread(target=self._discovery, daemon=True).start()
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop both servers."""
        self.http.shutdown()
        self.http.server_close()
        self.udp.close()

    def _discovery(self) -> None:
        while True:
            try:
                raw, sender = self.udp.recvfrom(65535)
            except OSError:
                return
            root = ET.fromstring(raw)
            message_id = root.findtext("s:Header/a:MessageID", "", NS)
            if root.find("s:Body/d:Probe", NS) is None:
                continue
            header = f"<s:Header><a:RelatesTo>{escape(message_id)}</a:RelatesTo></s:Header>"
            body = (
                "<d:ProbeMatches><d:ProbeMatch>"
                f"<a:EndpointReference><a:Address>{self.endpoint}</a:Address>"
                "</a:EndpointReference><d:Types>dn:NetworkVideoTransmitter</d:Types>"
                f"<d:Scopes>onvif://www.onvif.org/name/{self.name} "
                "onvif://www.onvif.org/hardware/TestCam-1</d:Scopes>"
                f"<d:XAddrs>{self.xaddr}</d:XAddrs></d:ProbeMatch></d:ProbeMatches>"
            )
            self.udp.sendto(_ENVELOPE.format(header=header, body=body).encode(), sender)

    def _authorized(self, root: ET.Element) -> bool:
        token = root.find(f"s:Header/{{{_WSSE}}}Security/{{{_WSSE}}}UsernameToken", NS)
        if token is None:
            return False
        nonce = base64.b64decode(token.findtext(f"{{{_WSSE}}}Nonce", ""))
        created = token.findtext(f"{{{_WSU}}}Created", "")
        expected = base64.b64encode(
            hashlib.sha1(nonce + created.encode() + self.password.encode()).digest()  # noqa: S324
        ).decode()
        return (
            token.findtext(f"{{{_WSSE}}}Username") == self.username
            and token.findtext(f"{{{_WSSE}}}Password") == expected
        )

    def answer(self, raw: bytes) -> tuple[int, str]:
        """(HTTP status, SOAP envelope) for one request."""
        root = ET.fromstring(raw)
        call = root.find("s:Body", NS)[0]
        self.calls.append(call.tag.split("}")[1])
        if not self._authorized(root):
            fault = (
                "<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode>"
                "<s:Value>ter:NotAuthorized</s:Value></s:Subcode></s:Code><s:Reason>"
                '<s:Text xml:lang="en">Sender not authorized</s:Text></s:Reason></s:Fault>'
            )
            return 400, _ENVELOPE.format(header="", body=fault)
        port = self.http.server_port
        if self.calls[-1] == "PullMessages":
            return 200, _ENVELOPE.format(header="", body=self._pull())
        bodies = {
            "GetCapabilities": "<tds:GetCapabilitiesResponse><tds:Capabilities><tt:Events>"
            f"<tt:XAddr>http://127.0.0.1:{port}/onvif/event_service</tt:XAddr></tt:Events>"
            f"<tt:Media><tt:XAddr>http://127.0.0.1:{port}/onvif/media_service</tt:XAddr>"
            "</tt:Media></tds:Capabilities></tds:GetCapabilitiesResponse>",
            "CreatePullPointSubscription": f"<tev:CreatePullPointSubscriptionResponse "
            f'xmlns:tev="{_TEV}" xmlns:wsa5="http://www.w3.org/2005/08/addressing">'
            "<tev:SubscriptionReference><wsa5:Address>"
            f"http://127.0.0.1:{port}/onvif/pull_point/1</wsa5:Address>"
            "</tev:SubscriptionReference></tev:CreatePullPointSubscriptionResponse>",
            "GetProfiles": "<trt:GetProfilesResponse>"
            '<trt:Profiles token="main"><tt:Name>Main</tt:Name><tt:VideoEncoderConfiguration>'
            "<tt:Encoding>H264</tt:Encoding><tt:Resolution><tt:Width>320</tt:Width>"
            "<tt:Height>240</tt:Height></tt:Resolution></tt:VideoEncoderConfiguration>"
            '</trt:Profiles><trt:Profiles token="sub"><tt:Name>Sub</tt:Name>'
            "</trt:Profiles></trt:GetProfilesResponse>",
            "GetStreamUri": "<trt:GetStreamUriResponse><trt:MediaUri>"
            f"<tt:Uri>{escape(self.stream_uri)}</tt:Uri></trt:MediaUri>"
            "</trt:GetStreamUriResponse>",
        }
        return 200, _ENVELOPE.format(header="", body=bodies[self.calls[-1]])

    def motion(self, active: bool = True) -> None:
        """The camera sees motion start (or end): the next PullMessages reports it."""
        self.events.put(("tns1:RuleEngine/CellMotionDetector/Motion", active))

    def _pull(self, wait: float = 1.0) -> str:
        """A PullMessagesResponse with the events waiting (held up to `wait` for one)."""
        notes = []
        try:
            notes.append(self.events.get(timeout=wait))
            while True:
                notes.append(self.events.get_nowait())
        except queue.Empty:
            pass
        body = "".join(
            '<wsnt:NotificationMessage xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2">'
            f'<wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">'
            f'{topic}</wsnt:Topic><wsnt:Message><tt:Message UtcTime="2026-01-01T00:00:00Z">'
            '<tt:Source><tt:SimpleItem Name="VideoSourceConfigurationToken" Value="1"/>'
            f'</tt:Source><tt:Data><tt:SimpleItem Name="IsMotion" Value="{str(active).lower()}"/>'
            "</tt:Data></tt:Message></wsnt:Message></wsnt:NotificationMessage>"
            for topic, active in notes
        )
        return f'<tev:PullMessagesResponse xmlns:tev="{_TEV}">{body}</tev:PullMessagesResponse>'

    def _handler(self):
        device = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, text = device.answer(raw)
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/soap+xml; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler
