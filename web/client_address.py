"""Who the client is: the one trusted proxy's X-Forwarded-For, and whether a caller is on this host."""

from __future__ import annotations

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from settings import Settings

LOOPBACK = frozenset({"127.0.0.1", "::1"})


def install_proxy_fix(app: Flask, settings: Settings) -> None:
    """Trust X-Forwarded-For from the proxy (nginx: on loopback, or AIG_PROXY_ADDRESSES) when AIG_TRUST_PROXY says so.

    Off by default: trusting the header when nothing in front rewrites it lets any caller pick
    the address its rate limit is counted under, while leaving it off behind nginx only lumps
    every caller under 127.0.0.1, which shows at once in the logs.
    """
    if settings.trust_proxy:
        # Only X-Forwarded-For: the scheme and host are gunicorn's business (forwarded_allow_ips).
        direct = app.wsgi_app
        fixed = ProxyFix(direct, x_for=1, x_proto=0, x_host=0, x_port=0, x_prefix=0)
        proxies = LOOPBACK | set(settings.proxy_addresses)

        def only_from_the_proxy(environ, start_response):
            # Behind nginx on another host this instance listens on the network: a caller that reached
            # it directly must not pick the address its rate limit is counted under.
            if environ.get("REMOTE_ADDR") in proxies:
                return fixed(environ, start_response)
            environ.pop("HTTP_X_FORWARDED_FOR", None)
            return direct(environ, start_response)

        app.wsgi_app = only_from_the_proxy


def direct_remote_addr() -> str:
    """The socket peer's address, before any ProxyFix rewrote it."""
    original = request.environ.get("werkzeug.proxy_fix.orig", {})
    return original.get("REMOTE_ADDR") or request.environ.get("REMOTE_ADDR", "")


def from_this_host() -> bool:
    """True for a caller on loopback that did not come through the proxy.

    nginx itself connects from loopback, so a loopback peer alone proves nothing; nginx always sets
    X-Forwarded-For, so a request without it did not pass through nginx.
    """
    return direct_remote_addr() in LOOPBACK and "X-Forwarded-For" not in request.headers
