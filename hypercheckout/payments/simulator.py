"""`hypercheckout payments-simulator`: a local stand-in for the part of Stripe's HTTP API the service uses, so that
the official ``stripe`` library talks to it unchanged (its API base pointed here), and so that tests, `up` and the
fault campaign can pay, decline, be slow, lose and repeat webhooks, and go down on demand.

What it speaks (form-encoded requests, JSON answers, Stripe's error shape, ``Idempotency-Key`` honoured):
``POST /v1/payment_intents`` (manual capture), ``GET /v1/payment_intents/{id}``, ``POST …/confirm`` (a test
payment method), ``POST …/capture``, ``POST …/cancel``. Webhooks are events signed as Stripe signs them
(``Stripe-Signature: t=…,v1=HMAC-SHA256(secret, "t.payload")``) and delivered with a delay, duplicated, reordered or
lost-then-retried as configured; a delivery that fails is retried with backoff, as Stripe's are.

Test payment methods: ``pm_card_visa`` authorizes, ``pm_card_chargeDeclined`` is declined, ``pm_card_slow``
authorizes after ``slow_seconds`` (the intent is ``processing`` meanwhile). No card number is ever taken: the
hosted page (``GET /pay/{id}``) offers these three, and the service never sees a card at all.

Control (loopback only, no key): ``GET/POST /_simulator/faults``, ``GET /_simulator/intents`` (every intent with its
captures, for the checkers), ``POST /_simulator/intents/{id}/pay`` (``{"payment_method": …}``, as the page does).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import random
import secrets
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import Any

import tornado.httpclient
import tornado.web

log = logging.getLogger(__name__)

API_VERSION = "2024-06-20"
DEFAULT_KEY = "sk_test_hypercheckout_simulator"
DEFAULT_WEBHOOK_SECRET = "whsec_hypercheckout_simulator"
CARDS = {"pm_card_visa": "authorized", "pm_card_chargeDeclined": "declined", "pm_card_slow": "slow"}
CANCELLABLE = ("requires_payment_method", "requires_confirmation", "requires_capture", "processing")
RETRY_SECONDS = (1, 2, 4, 8, 16, 30)  # then every 30 s until delivered


@dataclass
class Faults:
    """What goes wrong, changed at run time (POST /_simulator/faults)."""

    outage: bool = False  # every API call 503, webhooks held back until it ends
    webhook_delay_ms: int = 0  # before each delivery
    reorder_ms: int = 0  # an extra random delay up to this: events overtake each other
    duplicate: float = 0.0  # probability an event is delivered twice
    lose: float = 0.0  # probability a delivery is lost (the endpoint never sees it; retried later)
    slow_seconds: float = 3.0  # how long pm_card_slow takes to authorize

    def update(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if name not in self.__dataclass_fields__:
                raise ValueError(f"unknown fault {name!r}")
            kind = type(getattr(self, name))
            wrong = not isinstance(value, bool) if kind is bool else (
                isinstance(value, bool) or not isinstance(value, (int, float)))
            if wrong:
                raise ValueError(f"{name} must be a {kind.__name__}")
            setattr(self, name, kind(value))


@dataclass
class Intent:
    id: str
    amount: int
    currency: str
    metadata: dict[str, str]
    client_secret: str
    created: int
    status: str = "requires_payment_method"
    capture_method: str = "manual"
    amount_capturable: int = 0
    amount_received: int = 0
    payment_method: str | None = None
    last_payment_error: dict[str, Any] | None = None
    captures: int = 0  # how many times money was taken: more than one is a double capture
    cancellation_reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        body = {k: v for k, v in asdict(self).items() if k != "captures"}
        return {**body, "object": "payment_intent", "livemode": False}


@dataclass
class Simulator:
    api_key: str = DEFAULT_KEY
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET
    webhook_urls: list[str] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    intents: dict[str, Intent] = field(default_factory=dict)
    replies: dict[tuple[str, str], tuple[str, int, str]] = field(default_factory=dict)  # key -> (params, status, body)
    events_sent: int = 0
    deliveries: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    # --- the API ----------------------------------------------------------------------------------------------------

    def create(self, params: dict[str, Any]) -> Intent:
        amount, currency = params.get("amount"), params.get("currency")
        if not (isinstance(amount, str) and amount.isdigit() and 1 <= int(amount) <= 99_999_999):
            raise ApiError(400, "parameter_invalid_integer", "amount must be a whole number from 1 to 99999999")
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
            raise ApiError(400, "parameter_invalid_string", "currency must be an ISO 4217 code")
        if params.get("capture_method", "automatic") != "manual":
            raise ApiError(400, "parameter_invalid_string", "this simulator takes capture_method=manual only")
        metadata = params.get("metadata") or {}
        ident = "pi_" + secrets.token_hex(12)
        intent = Intent(ident, int(amount), currency.lower(), dict(metadata),
                        f"{ident}_secret_{secrets.token_hex(12)}", int(time.time()))
        self.intents[ident] = intent
        self.emit("payment_intent.created", intent)
        return intent

    def get(self, ident: str) -> Intent:
        intent = self.intents.get(ident)
        if intent is None:
            raise ApiError(404, "resource_missing", f"No such payment_intent: '{ident}'", param="intent")
        return intent

    def confirm(self, ident: str, payment_method: str) -> Intent:
        intent = self.get(ident)
        if intent.status not in ("requires_payment_method", "requires_confirmation"):
            raise unexpected(intent, "confirm")
        outcome = CARDS.get(payment_method)
        if outcome is None:
            raise ApiError(400, "resource_missing", f"No such PaymentMethod: '{payment_method}'",
                           param="payment_method")
        intent.payment_method = payment_method
        if outcome == "declined":
            intent.status = "requires_payment_method"
            intent.last_payment_error = {"type": "card_error", "code": "card_declined",
                                         "decline_code": "generic_decline", "message": "Your card was declined."}
            self.emit("payment_intent.payment_failed", intent)
        elif outcome == "slow":
            intent.status = "processing"
            intent.last_payment_error = None
            self.emit("payment_intent.processing", intent)
            self._spawn(self._authorize_later(intent, self.faults.slow_seconds))
        else:
            self._authorize(intent)
        return intent

    def _authorize(self, intent: Intent) -> None:
        intent.status = "requires_capture"
        intent.amount_capturable = intent.amount
        intent.last_payment_error = None
        self.emit("payment_intent.amount_capturable_updated", intent)

    async def _authorize_later(self, intent: Intent, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if intent.status == "processing":
            self._authorize(intent)

    def capture(self, ident: str) -> Intent:
        intent = self.get(ident)
        if intent.status != "requires_capture":
            raise unexpected(intent, "capture")
        intent.status = "succeeded"
        intent.amount_received = intent.amount_capturable
        intent.amount_capturable = 0
        intent.captures += 1
        self.emit("payment_intent.succeeded", intent)
        return intent

    def cancel(self, ident: str, reason: str | None) -> Intent:
        intent = self.get(ident)
        if intent.status not in CANCELLABLE:
            raise unexpected(intent, "cancel")
        intent.status = "canceled"
        intent.amount_capturable = 0
        intent.cancellation_reason = reason
        self.emit("payment_intent.canceled", intent)
        return intent

    # --- webhooks ---------------------------------------------------------------------------------------------------

    def emit(self, kind: str, intent: Intent) -> None:
        event = {"id": "evt_" + secrets.token_hex(12), "object": "event", "api_version": API_VERSION,
                 "created": int(time.time()), "type": kind, "livemode": False, "pending_webhooks": 1,
                 "request": {"id": None, "idempotency_key": None}, "data": {"object": intent.as_json()}}
        self.events_sent += 1
        payload = json.dumps(event, separators=(",", ":"))
        copies = 2 if random.random() < self.faults.duplicate else 1
        for url in self.webhook_urls:
            for _ in range(copies):
                self._spawn(self._deliver(url, payload))

    def sign(self, payload: str, at: int | None = None) -> str:
        """The ``Stripe-Signature`` header of ``payload``: its timestamp and the HMAC-SHA256 of "t.payload"."""
        at = int(time.time()) if at is None else at
        digest = hmac.new(self.webhook_secret.encode(), f"{at}.{payload}".encode(), hashlib.sha256).hexdigest()
        return f"t={at},v1={digest}"

    async def _deliver(self, url: str, payload: str) -> None:
        faults = self.faults
        await asyncio.sleep((faults.webhook_delay_ms + random.uniform(0, faults.reorder_ms)) / 1000)
        client = tornado.httpclient.AsyncHTTPClient()
        for attempt in range(10_000):
            if attempt:
                await asyncio.sleep(RETRY_SECONDS[min(attempt - 1, len(RETRY_SECONDS) - 1)])
            if faults.outage or random.random() < faults.lose:
                continue  # held back, or lost on the way: the endpoint never sees it; a retry comes later
            try:
                response = await client.fetch(url, method="POST", body=payload, raise_error=False,
                                              request_timeout=10, validate_cert=not _loopback(url),
                                              headers={"Content-Type": "application/json",
                                                       "Stripe-Signature": self.sign(payload)})
            except Exception:  # refused, reset, timed out: the endpoint did not take it
                continue
            self.deliveries += 1
            if 200 <= response.code < 300:
                return

    async def close(self) -> None:
        """Stop delivering: what is still on its way is dropped."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _loopback(url: str) -> bool:
    """A shop on this machine (`up --tls` has a self-signed certificate): its certificate is not checked."""
    return urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 intent: Intent | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.intent = status, code, message, param, intent

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": "invalid_request_error", "code": self.code, "message": self.message}
        if self.param:
            error["param"] = self.param
        if self.intent is not None:
            error["payment_intent"] = self.intent.as_json()
        return {"error": error}


def unexpected(intent: Intent, action: str) -> ApiError:
    return ApiError(400, "payment_intent_unexpected_state",
                    f"You cannot {action} this PaymentIntent because it has a status of {intent.status}.",
                    intent=intent)


def form_params(body: bytes) -> dict[str, Any]:
    """Stripe's form encoding: ``metadata[checkout_id]=x`` is a nested field."""
    params: dict[str, Any] = {}
    for name, value in urllib.parse.parse_qsl(body.decode(), keep_blank_values=True):
        if "[" in name and name.endswith("]"):
            outer, inner = name[:-1].split("[", 1)
            params.setdefault(outer, {})[inner] = value
        else:
            params[name] = value
    return params


class ApiHandler(tornado.web.RequestHandler):
    @property
    def sim(self) -> Simulator:
        return self.application.settings["simulator"]

    def check_xsrf_cookie(self) -> None:
        """An API for servers, with a key; no cookies."""

    def prepare(self) -> None:
        if self.sim.faults.outage:
            self._fail(ApiError(503, "simulator_outage", "the payment provider is down (simulated outage)"))
            return
        if self.request.headers.get("Authorization", "") != f"Bearer {self.sim.api_key}":
            self._fail(ApiError(401, "api_key_invalid", "Invalid API Key provided."))

    def _fail(self, error: ApiError) -> None:
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error.body()))

    def act(self, action: str, work: Any) -> None:
        """Run ``work`` once per Idempotency-Key: a retry gets the first answer; other parameters with the key, 400."""
        key = self.request.headers.get("Idempotency-Key")
        params = self.request.body.decode()
        if key is not None:
            kept = self.sim.replies.get((action, key))
            if kept is not None:
                if kept[0] != params:
                    self._fail(ApiError(400, "idempotency_key_in_use", "Keys for idempotent requests can only be "
                                                                       "used with the same parameters they were "
                                                                       "first used with."))
                    return
                self.set_status(kept[1])
                self.set_header("Content-Type", "application/json")
                self.set_header("Idempotent-Replayed", "true")
                self.finish(kept[2])
                return
        try:
            status, body = 200, json.dumps(work().as_json())
        except ApiError as error:
            status, body = error.status, json.dumps(error.body())
        if key is not None and status < 500:
            self.sim.replies[(action, key)] = (params, status, body)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(body)


class IntentsHandler(ApiHandler):
    def post(self) -> None:
        params = form_params(self.request.body)
        self.act("create", lambda: self.sim.create(params))


class IntentHandler(ApiHandler):
    def get(self, ident: str) -> None:
        self.act("get", lambda: self.sim.get(ident))

    def post(self, ident: str, action: str) -> None:
        params = form_params(self.request.body)
        if action == "confirm":
            self.act(f"confirm:{ident}", lambda: self.sim.confirm(ident, params.get("payment_method", "")))
        elif action == "capture":
            self.act(f"capture:{ident}", lambda: self.sim.capture(ident))
        else:
            self.act(f"cancel:{ident}", lambda: self.sim.cancel(ident, params.get("cancellation_reason")))


class FaultsHandler(tornado.web.RequestHandler):
    def check_xsrf_cookie(self) -> None:
        """Control for tests and the fault campaign, on loopback."""

    def get(self) -> None:
        sim: Simulator = self.application.settings["simulator"]
        self.finish({**asdict(sim.faults), "events_sent": sim.events_sent, "deliveries": sim.deliveries})

    def post(self) -> None:
        sim: Simulator = self.application.settings["simulator"]
        try:
            sim.faults.update(json.loads(self.request.body or b"{}"))
        except (ValueError, AttributeError) as exc:
            self.set_status(400)
            self.finish({"error": str(exc)})
            return
        self.get()


class StateHandler(FaultsHandler):
    def get(self) -> None:
        sim: Simulator = self.application.settings["simulator"]
        self.finish({"intents": [{**i.as_json(), "captures": i.captures} for i in sim.intents.values()]})


class PayHandler(FaultsHandler):
    """POST /_simulator/intents/{id}/pay: what the hosted page does, for tests and load tests."""

    def post(self, ident: str) -> None:
        sim: Simulator = self.application.settings["simulator"]
        body = json.loads(self.request.body or b"{}")
        try:
            intent = sim.confirm(ident, body.get("payment_method", "pm_card_visa"))
        except ApiError as error:
            self.set_status(error.status)
            self.finish(error.body())
            return
        self.finish(intent.as_json())


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Pay · payment simulator</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 30rem; margin: 2rem auto">
<p style="color:#b45309"><strong>Payment simulator</strong> · test payments only · no card is asked for or kept</p>
<h1 id="amount">{amount}</h1><p id="state">{state}</p>
<form method="post">{choices}</form></body></html>"""


class HostedPageHandler(tornado.web.RequestHandler):
    """GET/POST /pay/{id}?return_url=…: the buyer picks a test payment method; then back to the shop."""

    def check_xsrf_cookie(self) -> None:
        """A simulator's page: the intent id and its client secret are the capability."""

    def _intent(self, ident: str) -> Intent | None:
        sim: Simulator = self.application.settings["simulator"]
        intent = sim.intents.get(ident)
        secret = self.get_argument("client_secret", "")
        if intent is None or not hmac.compare_digest(secret, intent.client_secret):
            self.set_status(404)
            self.finish("no such payment")
            return None
        return intent

    def get(self, ident: str) -> None:
        intent = self._intent(ident)
        if intent is None:
            return
        choices = "".join(
            f'<p><button name="payment_method" value="{pm}" id="{pm}">{label}</button></p>'
            for pm, label in (("pm_card_visa", "Pay with a test card that is accepted"),
                              ("pm_card_chargeDeclined", "Pay with a test card that is declined"),
                              ("pm_card_slow", "Pay with a test card that takes a few seconds")))
        amount = f"{intent.amount} {intent.currency.upper()} (minor units)"
        self.finish(PAGE.format(amount=html.escape(amount), state=html.escape(intent.status), choices=choices))

    def post(self, ident: str) -> None:
        intent = self._intent(ident)
        if intent is None:
            return
        sim: Simulator = self.application.settings["simulator"]
        try:
            sim.confirm(ident, self.get_body_argument("payment_method", ""))
        except ApiError as error:
            self.set_status(error.status)
            self.finish(html.escape(error.message))
            return
        back = self.get_argument("return_url", "")
        if back.startswith(("http://", "https://")):
            self.redirect(back)
        else:
            self.finish(f"payment {html.escape(intent.status)}")


def make_app(simulator: Simulator) -> tornado.web.Application:
    return tornado.web.Application([
        (r"/v1/payment_intents", IntentsHandler),
        (r"/v1/payment_intents/(pi_[0-9a-f]+)", IntentHandler),
        (r"/v1/payment_intents/(pi_[0-9a-f]+)/(confirm|capture|cancel)", IntentHandler),
        (r"/_simulator/faults", FaultsHandler),
        (r"/_simulator/intents", StateHandler),
        (r"/_simulator/intents/(pi_[0-9a-f]+)/pay", PayHandler),
        (r"/pay/(pi_[0-9a-f]+)", HostedPageHandler),
    ], simulator=simulator)


async def serve(simulator: Simulator, host: str, port: int) -> None:
    app = make_app(simulator)
    app.listen(port, address=host)
    log.info("payment simulator on http://%s:%d, webhooks to %s", host, port, ", ".join(simulator.webhook_urls))
    await asyncio.Event().wait()
