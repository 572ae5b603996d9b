"""Signed webhooks (the Standard Webhooks scheme): secrets, signing, checking URLs, delivering."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import urllib3
from urllib3 import exceptions as u3

PREFIX = "whsec_"
MAX_URL_LENGTH = 2048
MAX_ANSWER_BYTES = 64 * 1024
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; not "private" to ipaddress, still not public
_SAFE = "!$%&'()*+,/:;=?@~"  # URL characters sent as they are; others (non-ASCII, quotes, braces) %-encoded
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # a NAT64 gateway would forward these to the embedded IPv4 address

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as the job records it."""

    at: float  # epoch seconds when the attempt started
    status: int | None  # the receiver's HTTP status, None when no answer
    error: str | None  # why it failed (None on a 2xx), fit to show the caller; never contains the secret
    duration_ms: float

    def delivered(self) -> bool:
        """Whether the receiver took it (a 2xx status)."""
        return self.status is not None and 200 <= self.status < 300

    def as_json(self) -> dict:
        """The attempt as a JSON object."""
        return {"at": self.at, "status": self.status, "error": self.error, "duration_ms": self.duration_ms}


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret: whsec_ secrets are base64 of 24..64 bytes, others their own UTF-8 bytes."""
    if not secret.startswith(PREFIX):
        if not secret:
            raise ValueError("a webhook secret may not be empty")
        return secret.encode()
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except binascii.Error:
        key = b""
    if not 24 <= len(key) <= 64:
        raise ValueError("a whsec_ webhook secret must be whsec_ and the base64 of 24 to 64 bytes")
    return key


def new_secret() -> str:
    """A fresh random secret, whsec_ form."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_for_owner(master: str, owner: str) -> str:
    """The webhook secret of one API key, derived from the master secret; owner "" has the master itself."""
    if not owner:
        return master
    derived = hmac.new(secret_key(master), b"webhook-secret\0" + owner.encode(), hashlib.sha256).digest()
    return PREFIX + base64.b64encode(derived).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature value of one message: "v1,<base64 HMAC-SHA256 of id.timestamp.body>"."""
    content = f"{webhook_id}.{int(timestamp)}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret_key(secret), content, hashlib.sha256).digest()).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance: float = 300,
           now: float | None = None) -> bool:
    """Whether the headers carry a fresh, valid signature of `body` under `secret`."""
    lowered = {name.lower(): value for name, value in headers.items()}
    webhook_id, stamp = lowered.get("webhook-id"), lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature")
    if not webhook_id or not signatures or not stamp.isascii() or not stamp.isdigit():
        return False
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False  # a replay of an old message, or a clock far off
    expected = sign(secret, webhook_id, timestamp, body).encode()
    # Check every entry, so the time taken does not say which one matched.
    found = [hmac.compare_digest(entry.encode(), expected) for entry in signatures.split() if entry.startswith("v1,")]
    return any(found)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """The networks in a comma-separated list such as "127.0.0.0/8, 10.1.0.0/16"."""
    networks = []
    for part in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or network") from None
    return tuple(networks)


@dataclass(frozen=True)
class _Target:
    """A checked URL: where to connect, and what to say in the request."""

    scheme: str
    host: str  # the name (or IP) as the URL gives it, ASCII; for SNI and the certificate check
    port: int
    host_header: str
    path: str
    addresses: tuple[IPAddress, ...]  # every address the host resolved to, all checked


def url_problem(url: str, allowed_networks: Sequence[IPNetwork] = ()) -> str | None:
    """None when webhooks may be sent to `url`, else a one-line reason."""
    return _target(url, allowed_networks)[1]


def _target(url: str, allowed: Sequence[IPNetwork]) -> tuple[_Target | None, str | None]:
    """The checked target of a URL, or the reason it may not be used."""
    if len(url) > MAX_URL_LENGTH:
        return None, f"the URL is longer than {MAX_URL_LENGTH} characters"
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        return None, "the URL may not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None, "the URL is not valid (check the host and port)"
    if parts.scheme.lower() not in ("http", "https"):
        return None, "the URL's scheme must be http or https"
    if "@" in parts.netloc:
        return None, "the URL may not carry a user name or password"
    if not parts.hostname:
        return None, "the URL has no host"
    if port is not None and not 1 <= port <= 65535:
        return None, "the URL's port must be 1 to 65535"
    literal = _ip(parts.hostname)
    try:
        host = parts.hostname if literal else parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return None, "the URL's host name is not valid"
    scheme = parts.scheme.lower()
    port = port or (443 if scheme == "https" else 80)
    addresses = (literal,) if literal else _resolve(host, port)
    if not addresses:
        return None, f"{host} does not resolve"
    for address in addresses:
        kind = _not_public(address, allowed)
        if kind:
            verb = "is" if literal else "resolves to"
            return None, f"{host} {verb} a {kind} address; webhooks go to public addresses only"
    bracketed = f"[{host}]" if ":" in host else host
    path = quote(parts.path or "/", safe=_SAFE) + (f"?{quote(parts.query, safe=_SAFE)}" if parts.query else "")
    host_header = bracketed if parts.port is None else f"{bracketed}:{parts.port}"
    return _Target(scheme, host, port, host_header, path, addresses), None


def _ip(text: str) -> IPAddress | None:
    """The address when `text` is an IP literal, else None."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address `host` resolves to (IPv4 and IPv6), in the resolver's order; () when it does not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return ()
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = _ip(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 scope ("fe80::1%eth0")
        if address is not None and address not in found:
            found.append(address)
    return tuple(found)


def _not_public(address: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """What kind of non-public address this is ("loopback", "private", ...), or None when it may be used."""
    embedded = None
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv6 form of an IPv4 address reaches that IPv4 address, so that is the one to judge.
        embedded = address.ipv4_mapped or address.sixtofour
        if address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(candidate in network for candidate in (address, embedded) if candidate for network in allowed):
        return None
    judged = embedded or address
    checks = (("loopback", judged.is_loopback), ("link-local", judged.is_link_local),
              ("unspecified", judged.is_unspecified), ("multicast", judged.is_multicast),
              ("shared (carrier-grade NAT)", judged in _SHARED), ("reserved", judged.is_reserved),
              ("private", judged.is_private), ("non-public", not judged.is_global))
    return next((kind for kind, hit in checks if hit), None)


def deliver(url: str, body: bytes, secret: str, webhook_id: str, *, allowed_networks: Sequence[IPNetwork] = (),
            timeout: float = 10.0, user_agent: str = "ai-image-generator-webhooks") -> Attempt:
    """POST one signed message to `url`; network problems come back as the attempt's error, never raised."""
    at, started = time.time(), time.monotonic()

    def attempt(status: int | None, error: str | None) -> Attempt:
        return Attempt(at, status, error, round((time.monotonic() - started) * 1000, 1))

    # Resolve once and connect to a checked address: a second lookup could answer a private one (DNS rebinding).
    target, problem = _target(url, allowed_networks)
    if target is None:
        return attempt(None, problem)
    timestamp = int(at)
    headers = {"Host": target.host_header, "Content-Type": "application/json", "User-Agent": user_agent,
               "webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(secret, webhook_id, timestamp, body)}
    pool = _pool(target, timeout)
    try:
        response = pool.urlopen("POST", target.path, body=body, headers=headers, retries=False, redirect=False,
                                preload_content=False, assert_same_host=False,
                                timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout))
        try:
            _drain(response, started + timeout)
        finally:
            response.close()
    except (u3.HTTPError, OSError) as e:  # urllib3 wraps most socket errors; OSError is for any it lets through
        return attempt(None, _describe(e, timeout))
    finally:
        pool.close()
    if 300 <= response.status < 400:
        return attempt(response.status, f"redirects are not followed (status {response.status})")
    if not 200 <= response.status < 300:
        return attempt(response.status, f"the receiver answered {response.status}")
    return attempt(response.status, None)


def _pool(target: _Target, timeout: float) -> urllib3.HTTPConnectionPool:
    """A one-off connection pool to the target's first checked address."""
    address = str(target.addresses[0])
    if target.scheme == "http":
        return urllib3.HTTPConnectionPool(address, target.port, maxsize=1)
    return urllib3.HTTPSConnectionPool(address, target.port, maxsize=1, server_hostname=target.host,
                                       assert_hostname=target.host, cert_reqs="CERT_REQUIRED", ca_certs=_ca_certs())


def _ca_certs() -> str | None:
    """certifi's bundle when installed; None lets urllib3 use the system's trust store."""
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _drain(response: urllib3.BaseHTTPResponse, deadline: float) -> None:
    """Read (and drop) at most 64 KiB of the answer, stopping at the deadline: only the status matters."""
    left = MAX_ANSWER_BYTES
    while left > 0 and time.monotonic() < deadline:
        try:
            chunk = response.read1(min(left, 16 * 1024), decode_content=False)
        except (u3.HTTPError, OSError):
            return  # the status is already known; a broken body does not change the outcome
        if not chunk:
            return
        left -= len(chunk)


def _describe(error: BaseException, timeout: float) -> str:
    """A short, caller-fit reason for a failed connection or exchange (no stack, no headers)."""
    if isinstance(error, u3.NewConnectionError):  # a subclass of ConnectTimeoutError, so it comes first
        cause = error.__cause__ if isinstance(error.__cause__, OSError) else None
        reason = cause.strerror if cause is not None and cause.strerror else "the connection failed"
        return f"could not connect: {reason[:1].lower()}{reason[1:]}"
    if isinstance(error, u3.ConnectTimeoutError | TimeoutError):
        return f"timed out after {min(timeout, 5.0):g} s connecting"
    if isinstance(error, u3.ReadTimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(error, u3.SSLError):
        return f"the TLS handshake failed: {_short(error.args[0] if error.args else error)}"
    if isinstance(error, u3.ProtocolError):
        return f"the connection broke: {_short(error.args[1] if len(error.args) > 1 else error)}"
    return f"the delivery failed: {_short(error)}"


def _short(detail: object) -> str:
    """An error's text cut to one short line."""
    text = str(detail).splitlines()[0] if str(detail) else type(detail).__name__
    return text[:200]
