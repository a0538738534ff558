"""What every JSON handler shares: the services, the client's address, and the one mapping of errors to HTTP."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import time
from typing import Any

import orjson
import tornado.web

from hypercheckout.checkout.errors import CheckoutError, buyer_mismatch

log = logging.getLogger(__name__)

REASONS = {
    400: "invalid_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "invalid_request", 500: "internal_error", 503: "unavailable",
}


# What json.dumps(default=str) did with what orjson knows natively: datetimes and dataclasses go through str.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_encode_with_json = json.JSONEncoder(separators=(",", ":"), default=str).encode


def encode_json(body: Any) -> bytes:
    """An answer's body. orjson took 0.13 µs for an order's answer where json's encoder took 2.9 µs (timeit), and
    gives the bytes Tornado sends instead of a string it encodes again. Anything it does not know goes through
    ``str`` as it did with json; a body it cannot take at all (an integer beyond 64 bits, a key that is not a
    string) goes through json."""
    try:
        return orjson.dumps(body, default=str, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return _encode_with_json(body).encode()


@functools.lru_cache(maxsize=4096)
def _trusted(peer: str, proxies: tuple[Any, ...]) -> bool:
    """Cached: behind nginx every request comes from the same few peers, and parsing an address costs more than
    the rest of a sold-out answer's checks together."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in net for net in proxies)


class JsonHandler(tornado.web.RequestHandler):
    """Base of every API handler. Raise ``CheckoutError`` anywhere; ``write_error`` turns it into the answer."""

    route = "other"  # the route's name in /metrics: a pattern, never the path (ids would make endless series)

    @property
    def services(self) -> Any:  # hypercheckout.app.Services; typed loosely to avoid an import cycle
        return self.application.settings["services"]

    def set_default_headers(self) -> None:
        services = self.application.settings["services"]
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Replica", services.settings.replica_id)
        if services.stopping:  # draining: the proxy must not send more requests on this connection
            self.set_header("Connection", "close")

    def check_xsrf_cookie(self) -> None:
        """The JSON API carries no cookies, so cross-site request forgery has nothing to ride on."""

    def prepare(self) -> None:
        self.services.request_started()
        self._counted = True

    def on_finish(self) -> None:
        if getattr(self, "_counted", False):
            self.services.request_finished()

    def write_json(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.finish(encode_json(body))

    def header(self, name: str) -> str | None:
        """A request header (repeated ones joined by commas, as Tornado's ``headers.get`` gives them), or None. Most
        requests lack most optional headers, and ``headers.get`` learns that by raising and catching a KeyError,
        which costs six times what finding one does."""
        values = self.request.headers.get_list(name)
        return ",".join(values) if values else None

    @property
    def from_trusted_proxy(self) -> bool:
        """The peer is a proxy whose headers name the client and the request's start (HC_TRUSTED_PROXIES)."""
        return _trusted(self.request.remote_ip or "", self.services.settings.trusted_proxies)

    @property
    def client_ip(self) -> str:
        """The peer's address, or the X-Real-IP its proxy set when the peer is a trusted proxy.

        A client's own X-Real-IP/X-Forwarded-For sent straight to a replica changes nothing: it is not a proxy.
        """
        peer = self.request.remote_ip or ""
        forwarded = self.header("X-Real-IP")
        if forwarded and self.from_trusted_proxy:
            try:
                return str(ipaddress.ip_address(forwarded.strip()))
            except ValueError:
                pass
        return peer

    @property
    def verified_buyers(self) -> bool:
        """HC_BUYER_AUTH=jwt: the buyer is the one a bearer token names, never a number the body carries."""
        return self.services.buyer_auth is not None

    async def buyer(self, claimed: int | None = None) -> int | None:
        """The verified buyer's number (HC_BUYER_AUTH=jwt), or ``claimed`` as the client wrote it (none). A
        ``claimed`` number (not 0: absent) that is not the token's buyer is 403 ``buyer_mismatch``."""
        auth = self.services.buyer_auth
        if auth is None:
            return claimed
        number = await auth.buyer(self.header("Authorization"))
        if claimed and claimed != number:
            raise buyer_mismatch()
        return number

    def waited(self) -> float:
        """Seconds since the request arrived: at the proxy (its ``X-Request-Start: t=<epoch seconds>``, believed
        only from a trusted proxy) or, without one, at this replica."""
        started = self.request._start_time
        header = self.header("X-Request-Start")
        if header and self.from_trusted_proxy:
            try:
                started = min(started, float(header.removeprefix("t=")))
            except ValueError:
                pass
        return max(0.0, time.time() - started)

    def answer_error(self, exc: CheckoutError) -> None:
        """The one mapping of a ``CheckoutError`` to an HTTP answer: its status, headers and JSON body."""
        for name, value in exc.headers.items():
            self.set_header(name, value)
        if exc.status >= 500:  # nginx's access log tells an overloaded 503 from an unavailable one by this
            self.set_header("X-Error-Code", exc.code)
        self.set_status(exc.status)
        self.finish(encode_json(exc.body()))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, CheckoutError):
            self.answer_error(exc)
            return
        # Anything else: a generic body; the traceback goes to the log only, never to the client.
        code = REASONS.get(status_code, "internal_error" if status_code >= 500 else "invalid_request")
        message = self._reason if status_code < 500 else "internal error; the request may be retried"
        self.finish(json.dumps({"error": {"code": code, "message": message}}))

    def _request_summary(self) -> str:
        # Tornado's warnings (e.g. a missing XSRF token) name the request with this: without the query string.
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, CheckoutError):
            return  # expected outcomes are not errors of the server
        if isinstance(value, tornado.web.HTTPError):
            super().log_exception(typ, value, tb)  # a warning naming the request by _request_summary
            return
        # Tornado's own line adds repr(self.request), whose URI carries the query string (tokens pasted into URLs).
        log.error("uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))


class NotFoundHandler(JsonHandler):
    """Unknown paths get the JSON error shape too, not Tornado's HTML page."""

    route = "unmatched"

    def prepare(self) -> None:
        super().prepare()
        raise CheckoutError(404, "not_found", f"no route for {self.request.path}")
