"""ONVIF: find cameras on the camera network (WS-Discovery) and ask them for their RTSP URI.

Discovery sends a WS-Discovery Probe for `dn:NetworkVideoTransmitter` to the multicast
group 239.255.255.250:3702 (or, directed, to one address) and reads the ProbeMatches: each
device's service addresses (XAddrs) and scopes (name, hardware, location). A device is then
asked over SOAP 1.2 for its media service (GetCapabilities), its profiles (GetProfiles) and
a profile's RTSP URI (GetStreamUri), with a WS-Security UsernameToken (password digest:
the password never crosses the network). XML from the network is parsed with defusedxml
(no entity expansion, no external entities) and bounded in size.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from defusedxml import ElementTree as SafeET

from edgebox.clock import iso
from edgebox.errors import EdgeboxError

MULTICAST = ("239.255.255.250", 3702)
MAX_REPLY = 1 << 20
NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "d": "http://schemas.xmlsoap.org/ws/2005/04/discovery",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
}
_WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
_WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)
_BASE64 = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-soap-message-security-1.0#Base64Binary"
)


class OnvifError(EdgeboxError):
    """A device that does not answer, refuses the credentials, or answers nonsense."""

    status = 502


def probe_message(message_id: str) -> bytes:
    """A WS-Discovery Probe for ONVIF video devices."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:d="{NS["d"]}" '
        'xmlns:dn="http://www.onvif.org/ver10/network/wsdl">'
        f"<s:Header><a:MessageID>{message_id}</a:MessageID>"
        '<a:To s:mustUnderstand="true">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>'
        '<a:Action s:mustUnderstand="true">'
        "http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</a:Action></s:Header>"
        "<s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body>"
        "</s:Envelope>"
    ).encode()


def _parse(raw: bytes, what: str) -> ET.Element:
    if len(raw) > MAX_REPLY:
        raise OnvifError(f"{what}: answer larger than {MAX_REPLY} bytes")
    try:
        return SafeET.fromstring(raw)
    except (ET.ParseError, ValueError) as exc:  # defusedxml's refusals are ValueErrors
        raise OnvifError(f"{what}: not usable XML ({exc})") from None


def parse_probe_match(raw: bytes, message_id: str) -> list[dict]:
    """The devices a ProbeMatches answer to `message_id` names (none for other messages)."""
    root = _parse(raw, "WS-Discovery answer")
    relates = root.findtext("s:Header/a:RelatesTo", "", NS).strip()
    if relates != message_id:
        return []
    devices = []
    for match in root.iterfind("s:Body/d:ProbeMatches/d:ProbeMatch", NS):
        scopes = match.findtext("d:Scopes", "", NS).split()
        devices.append(
            {
                "address": match.findtext("a:EndpointReference/a:Address", "", NS).strip(),
                "xaddrs": match.findtext("d:XAddrs", "", NS).split(),
                "scopes": scopes,
                "name": _scope(scopes, "name"),
                "hardware": _scope(scopes, "hardware"),
            }
        )
    return devices


def _scope(scopes: list[str], kind: str) -> str | None:
    prefix = f"onvif://www.onvif.org/{kind}/"
    for scope in scopes:
        if scope.startswith(prefix):
            return urllib.request.unquote(scope[len(prefix) :])
    return None


def discover(timeout: float = 3.0, target: tuple[str, int] = MULTICAST) -> list[dict]:
    """Probe for ONVIF devices and gather the answers for `timeout` seconds."""
    message_id = f"uuid:{uuid.uuid4()}"
    found: dict[str, dict] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.sendto(probe_message(message_id), target)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                raw, sender = sock.recvfrom(65535)
            except TimeoutError:
                break
            try:
                devices = parse_probe_match(raw, message_id)
            except OnvifError:
                continue  # a stray datagram on the port
            for device in devices:
                device["from"] = sender[0]
                found.setdefault(device["address"] or ",".join(device["xaddrs"]), device)
    return sorted(found.values(), key=lambda d: (d["name"] or "", d["address"]))


def _security(username: str, password: str) -> str:
    nonce = os.urandom(16)
    created = iso()[:19] + "Z"
    digest = base64.b64encode(
        hashlib.sha1(nonce + created.encode() + password.encode()).digest()  # noqa: S324 - WS-Security's digest
    ).decode()
    return (
        f'<Security s:mustUnderstand="1" xmlns="{_WSSE}"><UsernameToken>'
        f"<Username>{escape(username)}</Username>"
        f'<Password Type="{_DIGEST}">{digest}</Password>'
        f'<Nonce EncodingType="{_BASE64}">{base64.b64encode(nonce).decode()}</Nonce>'
        f'<Created xmlns="{_WSU}">{created}</Created></UsernameToken></Security>'
    )


def soap_call(
    url: str, body: str, username: str | None, password: str | None, timeout: float = 5.0
) -> ET.Element:
    """POST one SOAP 1.2 request; the Body's first child of the answer, or OnvifError."""
    if not url.startswith(("http://", "https://")):
        raise OnvifError(f"not an ONVIF service address: {url[:100]}", status=400)
    header = f"<s:Header>{_security(username, password or '')}</s:Header>" if username else ""
    envelope = (
        f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{NS["s"]}" '
        f'xmlns:tds="{NS["tds"]}" xmlns:trt="{NS["trt"]}" xmlns:tt="{NS["tt"]}">'
        f"{header}<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
        url, envelope, {"Content-Type": "application/soap+xml; charset=utf-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - checked
            raw = answer.read(MAX_REPLY + 1)
    except urllib.error.HTTPError as exc:
        raw = exc.read(MAX_REPLY + 1)
        if exc.code == 401 or b"NotAuthorized" in raw:
            raise OnvifError(
                "the camera refused the ONVIF user name or password", status=401
            ) from None
        if not raw:
            raise OnvifError(f"ONVIF request to the camera failed: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OnvifError(f"the camera's ONVIF service does not answer: {reason}") from None
    root = _parse(raw, "ONVIF answer")
    fault = root.find("s:Body/s:Fault", NS)
    if fault is not None:
        text = " ".join(t.strip() for t in fault.itertext() if t.strip())
        if "NotAuthorized" in text:
            raise OnvifError("the camera refused the ONVIF user name or password", status=401)
        raise OnvifError(f"the camera answered with a SOAP fault: {text[:300]}")
    answer = root.find("s:Body", NS)
    if answer is None or len(answer) == 0:
        raise OnvifError("the camera's ONVIF answer has no body")
    return answer[0]


def stream_profiles(xaddr: str, username: str | None, password: str | None) -> list[dict]:
    """Every media profile of the device at `xaddr` with its RTSP URI."""
    capabilities = soap_call(
        xaddr,
        "<tds:GetCapabilities><tds:Category>Media</tds:Category></tds:GetCapabilities>",
        username,
        password,
    )
    media = capabilities.findtext(".//tt:Media/tt:XAddr", "", NS).strip() or xaddr
    profiles = soap_call(media, "<trt:GetProfiles/>", username, password)
    found = []
    for profile in profiles.iterfind("trt:Profiles", NS):
        token = profile.get("token", "")
        answer = soap_call(
            media,
            "<trt:GetStreamUri><trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream>"
            "<tt:Transport><tt:Protocol>RTSP</tt:Protocol></tt:Transport></trt:StreamSetup>"
            f"<trt:ProfileToken>{escape(token)}</trt:ProfileToken></trt:GetStreamUri>",
            username,
            password,
        )
        encoder = profile.find("tt:VideoEncoderConfiguration", NS)
        found.append(
            {
                "token": token,
                "name": profile.findtext("tt:Name", "", NS),
                "encoding": encoder.findtext("tt:Encoding", "", NS) if encoder is not None else "",
                "width": _int(encoder, "tt:Resolution/tt:Width"),
                "height": _int(encoder, "tt:Resolution/tt:Height"),
                "uri": answer.findtext("trt:MediaUri/tt:Uri", "", NS).strip(),
            }
        )
    if not found:
        raise OnvifError("the camera offers no media profile")
    return found


def _int(element, path: str) -> int | None:
    text = element.findtext(path, "", NS) if element is not None else ""
    return int(text) if text.strip().isdigit() else None


def pick_profile(profiles: list[dict], token: str | None) -> dict:
    """The profile named by `token`, else the first (usually the main stream)."""
    if token is None:
        return profiles[0]
    for profile in profiles:
        if profile["token"] == token:
            return profile
    tokens = ", ".join(p["token"] for p in profiles)
    raise OnvifError(f"no profile {token}; the camera offers {tokens}", status=400)
