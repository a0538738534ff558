"""Every setting of HyperCheckout, read from ``HC_*`` environment variables in this one place.

Each field names its variable, its default (chosen to work against a local PostgreSQL and Redis) and a line of
documentation. A bad value stops the process at start with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from hypercheckout.redisclient import CLUSTER_SCHEMES, cluster_seeds

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

STRATEGIES = ("pessimistic", "atomic", "batched")
EVENT_LOOPS = ("uvloop", "asyncio")
BUYER_AUTH = ("none", "jwt")
PAYMENTS = ("off", "simulator", "stripe")
STRIPE_API = "https://api.stripe.com"
JWT_ALGORITHMS = ("RS256", "ES256", "EdDSA")  # asymmetric only (hypercheckout/buyers/tokens.py)
LOCAL_ISSUER = "hypercheckout-local-issuer"  # the iss of hypercheckout/buyers/issuer.py's tokens


class SettingsError(ValueError):
    """A ``HC_*`` variable holds a value that cannot be used; the message names it."""


def parse_rate(text: str) -> float | None:
    """``"20/s"``, ``"600/m"``, ``"3600/h"`` → requests per second; ``"off"`` → None (limiter disabled)."""
    text = text.strip().lower()
    if text in ("off", "none", "0"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*/\s*(s|sec|m|min|h|hour)", text)
    if not match:
        raise ValueError("expected a rate like '20/s', '600/m' or 'off'")
    per = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}[match.group(2)]
    rate = float(match.group(1)) / per
    if rate <= 0:
        raise ValueError("a rate must be positive (or 'off')")
    return rate


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR blocks, e.g. ``"127.0.0.0/8,::1"``."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a whole number ≥ 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise ValueError("must be a number ≥ 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also rejects NaN
        raise ValueError("must be a number > 0")
    return value


MIN_PERIOD_MS = 10.0


def _period_ms(text: str) -> float:
    """How often a background loop runs: 0 would make it spin on the event loop."""
    value = float(text)
    if not value >= MIN_PERIOD_MS:
        raise ValueError(f"must be a number of milliseconds ≥ {MIN_PERIOD_MS:g}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0-65535")
    return value


def _strategy(text: str) -> str:
    if text not in STRATEGIES:
        raise ValueError(f"must be one of {', '.join(STRATEGIES)}")
    return text


def _event_loop(text: str) -> str:
    if text not in EVENT_LOOPS:
        raise ValueError(f"must be one of {', '.join(EVENT_LOOPS)}")
    return text


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be a probability from 0 to 1")
    return value


def _payments(text: str) -> str:
    if text not in PAYMENTS:
        raise ValueError(f"must be one of {', '.join(PAYMENTS)}")
    return text


def _buyer_auth(text: str) -> str:
    if text not in BUYER_AUTH:
        raise ValueError(f"must be one of {', '.join(BUYER_AUTH)}")
    return text


def _algorithms(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names or set(names) - set(JWT_ALGORITHMS):
        raise ValueError(f"must be a comma-separated list of {', '.join(JWT_ALGORITHMS)} (never none or an HMAC)")
    return names


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def parse_public_urls(text: str) -> tuple[str, ...]:
    """Comma-separated origins the site is reached at, e.g. ``"https://shop.example,https://www.shop.example"``."""
    urls = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        parsed = urlsplit(part)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path.strip("/") or parsed.query:
            raise ValueError(f"{part!r} is not an origin like https://shop.example or http://127.0.0.1:8080")
        urls.append(f"{parsed.scheme}://{parsed.netloc}".lower())
    return tuple(urls)


def _log_level(text: str) -> str:
    if text.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return text.upper()


def _text(text: str) -> str:
    return text


def _redis_url(text: str) -> str:
    scheme = text.partition("://")[0]
    if scheme not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
        raise ValueError("expected redis://, rediss://, unix:// or redis+cluster:// (a Redis Cluster's nodes)")
    if scheme in CLUSTER_SCHEMES:
        cluster_seeds(text)  # raises ValueError naming the bad part
    return text


def _redis_prefix(text: str) -> str:
    # Braces would make part of the prefix every key's Redis Cluster hash tag: all keys in one slot.
    if "{" in text or "}" in text:
        raise ValueError("must not contain { or } (they choose a key's Redis Cluster slot)")
    return text


def setting(env: str, default: Any, parse: Callable[[str], Any], doc: str) -> Any:
    """Declare one setting: its variable, default, parser and documentation, kept side by side."""
    return field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one HyperCheckout process."""

    database_url: str = setting(
        "HC_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/hypercheckout", _text,
        "PostgreSQL URL; the database is created on first start if the server allows it.")
    redis_url: str = setting(
        "HC_REDIS_URL", "redis://127.0.0.1:6379/0", _redis_url,
        "Redis URL; a Redis Cluster as redis+cluster://[:password@]host:port[,host:port…] (its seed nodes).")
    redis_prefix: str = setting(
        "HC_REDIS_PREFIX", "hc:", _redis_prefix,
        "Prefix of every Redis key and channel, so deployments can share a Redis.")
    host: str = setting("HC_HOST", "127.0.0.1", _text, "Address `serve` listens on.")
    port: int = setting("HC_PORT", 8000, _port, "Port `serve` listens on.")
    replica_id: str = setting(
        "HC_REPLICA_ID", "", _text, "Name of this replica in answers and hit counts (default: host name).")
    strategy: str = setting(
        "HC_STRATEGY", "batched", _strategy, "Purchase strategy: pessimistic, atomic or batched.")
    event_loop: str = setting(
        "HC_EVENT_LOOP", "uvloop", _event_loop,
        "Event loop of `serve`: uvloop (about a quarter less CPU per request) or asyncio's own.")
    gc_freeze: bool = setting(
        "HC_GC_FREEZE", True, _boolean,
        "Once started, keep the replica's heap out of Python's garbage collections (gc.freeze): no full collection "
        "walks the libraries and the app again while the replica serves.")
    max_quantity: int = setting("HC_MAX_QUANTITY", 10, _positive_int, "Largest quantity one order may ask for.")
    max_body_bytes: int = setting(
        "HC_MAX_BODY_BYTES", 1024, _positive_int, "Largest purchase request body accepted, in bytes.")
    rate_limit: float | None = setting(
        "HC_RATE_LIMIT", 20.0, parse_rate, "Purchases allowed per buyer (user_id): '20/s', '600/m' or 'off'.")
    rate_burst: int = setting(
        "HC_RATE_BURST", 20, _positive_int, "Purchases a buyer may make at once before the rate applies.")
    ip_rate_limit: float | None = setting(
        "HC_IP_RATE_LIMIT", 200.0, parse_rate, "Purchases allowed per client address: '200/s' or 'off'.")
    ip_rate_burst: int = setting(
        "HC_IP_RATE_BURST", 200, _positive_int, "Purchases a client address may make at once.")
    ban_after: int = setting(
        "HC_BAN_AFTER", 50, _positive_int, "Rejections within HC_BAN_WINDOW seconds after which a client is banned.")
    ban_window: float = setting(
        "HC_BAN_WINDOW", 60.0, _non_negative_float, "Window, in seconds, in which rejections count toward a ban.")
    ban_seconds: float = setting("HC_BAN_SECONDS", 300.0, _non_negative_float, "How long a ban lasts, in seconds.")
    local_deny_ms: float = setting(
        "HC_LOCAL_DENY_MS", 250.0, _non_negative_float,
        "Longest a replica refuses a rate-limited or banned client itself, without asking Redis (0: always ask); "
        "also how late an unban can reach the other replicas.")
    trusted_proxies: tuple[Network, ...] = setting(
        "HC_TRUSTED_PROXIES", parse_networks("127.0.0.0/8,::1"), parse_networks,
        "Peers whose X-Real-IP header names the client (comma-separated addresses or CIDR blocks).")
    db_pool_size: int = setting("HC_DB_POOL_SIZE", 10, _positive_int, "PostgreSQL connections per process.")
    db_timeout: float = setting(
        "HC_DB_TIMEOUT", 5.0, _positive_float, "Seconds a PostgreSQL connect or statement may take.")
    redis_timeout: float = setting(
        "HC_REDIS_TIMEOUT", 0.25, _positive_float, "Seconds a Redis call may take before failing open.")
    batch_window_ms: float = setting(
        "HC_BATCH_WINDOW_MS", 2.0, _non_negative_float,
        "Batched strategy: how long a purchase may wait for others to share its transaction.")
    batch_busy_window_ms: float = setting(
        "HC_BATCH_BUSY_WINDOW_MS", 8.0, _non_negative_float,
        "Batched strategy: the window while a product's batches are busy (the last one settled held 4 purchases or "
        "more): larger batches under load. Never shorter than HC_BATCH_WINDOW_MS.")
    batch_max: int = setting(
        "HC_BATCH_MAX", 64, _positive_int, "Batched strategy: most purchases settled in one transaction.")
    batch_queue_max: int = setting(
        "HC_BATCH_QUEUE_MAX", 512, _positive_int,
        "Batched strategy: most purchases of one product waiting in this replica; more are refused (503 overloaded).")
    max_in_flight: int = setting(
        "HC_MAX_IN_FLIGHT", 128, _positive_int,
        "Purchases one replica serves at once; more are refused at once with 503 overloaded (admission control).")
    max_joins_in_flight: int = setting(
        "HC_MAX_JOINS_IN_FLIGHT", 128, _positive_int,
        "Waiting-room joins one replica serves at once, a bound of their own: a herd of joins at a drop's start "
        "cannot take the in-flight places of the purchases its admitted buyers make. More are refused at once with "
        "503 overloaded.")
    join_connections: int = setting(
        "HC_JOIN_CONNECTIONS", 2, _positive_int,
        "PostgreSQL connections a replica's joins use at once (at most HC_DB_POOL_SIZE - 1): the others stay free "
        "for purchases. Joins of one product take their line's row lock in turn, so more would only wait on it "
        "holding connections; joins past this wait in memory.")
    front_door_in_flight: int = setting(
        "HC_FRONT_DOOR_IN_FLIGHT", 128, _positive_int,
        "Purchases nginx lets through to each replica at once (`up` and `nginx-config` multiply it by the "
        "replicas); past that nginx itself answers 503 overloaded, at a few microseconds each. 128, a replica's "
        "own in-flight bound: a burst of a few hundred reaches the replicas, whose controlled delay tells it from "
        "a standing queue and which know the true refusals (sold out, not started); a herd past it costs them "
        "nothing.")
    overload_answers: int = setting(
        "HC_OVERLOAD_ANSWERS", 2500, _positive_int,
        "Most 503 overloaded answers nginx gives a second; past that each waits its turn (free), so a herd that "
        "re-sends at once cannot spend the admitted buyers' CPU on being refused.")
    admission_target_ms: float = setting(
        "HC_ADMISSION_TARGET_MS", 5.0, _positive_float,
        "Admission control's controlled delay: a replica whose shortest wait before a purchase's handler stays above "
        "this for a whole interval has a standing queue, and then refuses (503 overloaded) purchases that waited "
        "more than twice this. 5 ms is CoDel's target: well above what a purchase waits on a loopback or LAN hop "
        "to an idle replica, on a busy two-core machine too, and short against the 100 ms goal of a served buyer.")
    admission_interval_ms: float = setting(
        "HC_ADMISSION_INTERVAL_MS", 100.0, _positive_float,
        "Admission control's controlled delay: how long the shortest wait must stay above the target before the "
        "queue counts as standing. A burst whose first purchases are served within it is served whole; 100 ms is "
        "CoDel's interval, and a burst of hundreds starts its handlers within a few milliseconds here.")
    idempotency_ttl_hours: float = setting(
        "HC_IDEMPOTENCY_TTL_HOURS", 24.0, _non_negative_float,
        "How long an Idempotency-Key is remembered (its answer replayed), in hours; at least 24 per the API.")
    idempotency_sweep_s: float = setting(
        "HC_IDEMPOTENCY_SWEEP_S", 600.0, _non_negative_float, "How often expired Idempotency-Keys are deleted.")
    soldout_recheck_ms: float = setting(
        "HC_SOLDOUT_RECHECK_MS", 500.0, _period_ms,
        "How often a replica re-reads PostgreSQL for products it believes sold out.")
    schedule_refresh_ms: float = setting(
        "HC_SCHEDULE_REFRESH_MS", 1000.0, _period_ms,
        "How often a replica re-reads every product's sale window and limits from PostgreSQL (changes announced "
        "over Redis arrive sooner).")
    hold_sweep_ms: float = setting(
        "HC_HOLD_SWEEP_MS", 1000.0, _period_ms,
        "How often a replica gives back checkouts' holds that ran out (their units count as available from the "
        "instant they expire; this only moves them back into stock).")
    stats_flush_ms: float = setting(
        "HC_STATS_FLUSH_MS", 250.0, _period_ms, "How often per-replica hit counts are flushed to Redis.")
    buyer_auth: str = setting(
        "HC_BUYER_AUTH", "none", _buyer_auth,
        "Who a buyer is: none (the user_id the body carries, as the original) or jwt (a bearer token verified "
        "against the issuer's keys on every buyer request).")
    jwt_issuer: str = setting("HC_JWT_ISSUER", "", _text, "jwt: the issuer (iss) buyers' tokens must name.")
    jwt_audience: str = setting("HC_JWT_AUDIENCE", "hypercheckout", _text,
                                "jwt: the audience (aud) buyers' tokens must name.")
    jwks_url: str = setting("HC_JWKS_URL", "", _text, "jwt: the issuer's JWKS URL (cached; fetched again on an "
                                                      "unknown kid, at most every 10 s, and every 5 minutes).")
    jwks_file: str = setting("HC_JWKS_FILE", "", _text, "jwt: a JWKS file instead of a URL (re-read likewise).")
    jwt_algorithms: tuple[str, ...] = setting(
        "HC_JWT_ALGORITHMS", JWT_ALGORITHMS, _algorithms,
        "jwt: the signature algorithms accepted, comma-separated (RS256, ES256, EdDSA); never taken from a token.")
    jwt_leeway_s: float = setting("HC_JWT_LEEWAY_S", 30.0, _non_negative_float,
                                  "jwt: seconds of clock skew forgiven on a token's exp and nbf.")
    payments: str = setting(
        "HC_PAYMENTS", "off", _payments,
        "off: a checkout is confirmed by its buyer. simulator or stripe: a checkout of a priced product is paid "
        "through a PaymentIntent (manual capture, the official stripe library), and its payment confirms it.")
    stripe_api_key: str = setting("HC_STRIPE_API_KEY", "", _text, "payments: the provider's secret API key.")
    stripe_webhook_secret: str = setting(
        "HC_STRIPE_WEBHOOK_SECRET", "", _text, "payments: the secret webhooks are signed with (whsec_...).")
    stripe_api_base: str = setting(
        "HC_STRIPE_API_BASE", "", _text,
        f"payments: the provider's API (default {STRIPE_API}; the simulator's URL with simulator).")
    payment_page_url: str = setting(
        "HC_PAYMENT_PAGE_URL", "", _text,
        "simulator: where buyers reach its hosted payment page (default: HC_STRIPE_API_BASE).")
    payment_timeout_s: float = setting(
        "HC_PAYMENT_TIMEOUT_S", 10.0, _positive_float, "payments: seconds a call to the provider may take.")
    payment_reconcile_s: float = setting(
        "HC_PAYMENT_RECONCILE_S", 5.0, _positive_float,
        "payments: how often one replica settles the payments in doubt (a lost webhook, a crash before a capture).")
    payment_grace_s: float = setting(
        "HC_PAYMENT_GRACE_S", 30.0, _non_negative_float,
        "payments: seconds after a hold ends before its unpaid payment is cancelled (a late authorization within "
        "them is still honoured, re-booked if units are available).")
    failpoint_crash_before_capture: float = setting(
        "HC_FAILPOINT_CRASH_BEFORE_CAPTURE", 0.0, _probability,
        "Fault campaigns only: the probability that a replica kills itself right after committing a paid order and "
        "before capturing its payment (the reconciler must capture it). 0 in production.")
    demo_signin: str = setting(
        "HC_DEMO_SIGNIN", "", _text,
        "jwt with the local issuer only: its directory (`up --buyer-auth jwt` sets DATA/issuer). The buyer page "
        "then signs a buyer in by any name (POST /demo/sign-in) - a demo with no password, never for a real shop.")
    admin_token: str = setting("HC_ADMIN_TOKEN", "", _text, "Token for the admin dashboard (generated when empty).")
    public_urls: tuple[str, ...] = setting(
        "HC_PUBLIC_URL", (), parse_public_urls,
        "Origin(s) the site is reached at, comma-separated (e.g. https://shop.example). The dashboard's WebSocket "
        "accepts only these origins; with https, admin cookies are Secure and __Host- prefixed.")
    login_failures_per_address: int = setting(
        "HC_LOGIN_FAILURES_PER_ADDRESS", 10, _positive_int,
        "Failed admin logins one client address may make in an hour before it is locked out.")
    login_failures_total: int = setting(
        "HC_LOGIN_FAILURES_TOTAL", 100, _positive_int,
        "Failed admin logins from all addresses together in an hour before every login is refused.")
    cookie_secret: str = setting(
        "HC_COOKIE_SECRET", "", _text, "Secret signing admin cookies; must be the same on every replica.")
    shutdown_grace: float = setting(
        "HC_SHUTDOWN_GRACE", 10.0, _non_negative_float, "Seconds a stopping replica waits for in-flight requests.")
    access_log: bool = setting(
        "HC_ACCESS_LOG", False, _boolean, "Log every request (off: only server errors are logged).")
    log_level: str = setting("HC_LOG_LEVEL", "INFO", _log_level, "Python log level: DEBUG, INFO, WARNING, ERROR.")

    def __post_init__(self) -> None:
        # Derived defaults: computed here so that an explicit value always wins.
        if not self.replica_id:
            object.__setattr__(self, "replica_id", socket.gethostname())
        if not self.admin_token:
            object.__setattr__(self, "admin_token", secrets.token_urlsafe(18))
        if not self.cookie_secret:
            object.__setattr__(self, "cookie_secret", secrets.token_urlsafe(32))
        if self.buyer_auth == "jwt" and not (self.jwt_issuer and (self.jwks_url or self.jwks_file)):
            raise SettingsError("HC_BUYER_AUTH=jwt needs HC_JWT_ISSUER and the issuer's keys: HC_JWKS_URL or "
                                "HC_JWKS_FILE")
        if self.payments != "off" and not (self.stripe_api_key and self.stripe_webhook_secret):
            raise SettingsError("HC_PAYMENTS needs HC_STRIPE_API_KEY and HC_STRIPE_WEBHOOK_SECRET")
        if self.payments == "simulator" and not self.stripe_api_base:
            raise SettingsError("HC_PAYMENTS=simulator needs HC_STRIPE_API_BASE, the simulator's URL")
        if self.demo_signin and not (self.buyer_auth == "jwt" and self.jwt_issuer == LOCAL_ISSUER):
            # A sign-in that asks for no password is only ever the local issuer's: never one a real shop trusts.
            raise SettingsError(f"HC_DEMO_SIGNIN needs HC_BUYER_AUTH=jwt with HC_JWT_ISSUER={LOCAL_ISSUER}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default: the process environment), then apply ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            env = f.metadata["env"]
            raw = environ.get(env)
            if raw is None:
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                raise SettingsError(f"{env}={raw!r}: {exc}") from None
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def secure_cookies(self) -> bool:
        """The site is served over https: admin cookies must never travel over plain http."""
        return bool(self.public_urls) and self.public_urls[0].startswith("https://")

    @property
    def limiter_enabled(self) -> bool:
        return self.rate_limit is not None or self.ip_rate_limit is not None


def documentation() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, for `hypercheckout settings` and the README."""
    rows = []
    for f in fields(Settings):
        default = f.default
        if f.metadata["parse"] is parse_rate:
            default = "off" if default is None else f"{default:g}/s"
        elif isinstance(default, tuple):
            default = ",".join(str(n) for n in default)
        rows.append((f.metadata["env"], str(default), f.metadata["doc"]))
    return rows
