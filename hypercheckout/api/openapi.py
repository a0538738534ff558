"""GET /openapi.json: the OpenAPI 3.1 description of the public API, built from the settings in force (the largest
quantity is the replica's own). tests/test_openapi.py holds the handlers to it with schemathesis."""

from __future__ import annotations

from typing import Any

from hypercheckout.api.base import JsonHandler
from hypercheckout.catalog import MAX_ADMIT_PER_SECOND, MAX_HOLD_SECONDS, MAX_NAME, MAX_PASS_SECONDS, MAX_PRICE
from hypercheckout.checkout.validation import MAX_ID, MAX_UNITS
from hypercheckout.settings import Settings

ERROR_CODES = [
    "invalid_request", "not_found", "unknown_product", "out_of_stock", "limit_reached", "request_in_progress",
    "idempotency_key_reused", "rate_limited", "banned", "unavailable", "overloaded", "method_not_allowed",
    "internal_error", "forbidden", "sale_not_started", "sale_ended", "has_orders", "unauthorized",
    "queue_pass_required", "queue_pass_invalid", "queue_pass_expired", "queue_pass_used", "no_waiting_room",
    "unknown_ticket", "units_held", "unknown_checkout", "hold_expired", "checkout_released", "checkout_confirmed",
    "invalid_token", "buyer_mismatch",
]


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    return response


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}


def document(settings: Settings) -> dict[str, Any]:
    identifier = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    unavailable = _error("PostgreSQL (or the replica) is unavailable; nothing was sold.", retry_after=False)
    purchase_unavailable = _error(
        "unavailable: PostgreSQL (or the replica) is unavailable, with outcome nothing_sold or unknown; or "
        "overloaded: refused by admission control before any work (outcome nothing_sold, Retry-After set).",
        retry_after=True)
    purchase_parameters = [{
        "name": "Idempotency-Key", "in": "header", "required": False,
        "description": "1-255 printable ASCII characters; remembered at least 24 hours.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
    }, {
        "name": "Queue-Pass", "in": "header", "required": False,
        "description": "For a product with a waiting room: the pass GET /queue/{ticket} gave once "
                       "admitted (a longer or malformed one is queue_pass_invalid). Ignored for a "
                       "product without one.",
        "schema": {"type": "string"},
    }]
    checkout_id = {"name": "checkout_id", "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
    product_id = {"name": "product_id", "in": "path", "required": True,
                  "schema": {"type": "integer", "minimum": 1, "maximum": 999_999_999_999_999_999}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "HyperCheckout",
            "version": "1.0",
            "description": "Flash-sale checkout: sells exactly the stock it has. Compatible with the original "
                           "HyperCheckout's POST /purchase. Every error has the shape "
                           '{"error": {"code": ..., "message": ...}}.',
        },
        "paths": {
            "/purchase": {"post": {
                "operationId": "purchase",
                "summary": "Buy units of a product.",
                "description": "The body is JSON whatever the Content-Type says (curl -d sends a form type). "
                               "A retry with the same Idempotency-Key and body returns the first answer. "
                               "With HC_BUYER_AUTH=jwt every buyer request (this one, checkouts, joining a queue, "
                               "a ticket's standing) needs Authorization: Bearer <token>: the buyer is the token's "
                               "(issuer, subject), user_id may be left out and, if given, must be that buyer's "
                               "(403 buyer_mismatch); a missing or bad token is 401 invalid_token "
                               "(WWW-Authenticate: Bearer error=\"invalid_token\"), keys that cannot be had 503.",
                "parameters": purchase_parameters,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/PurchaseRequest"}}}},
                "responses": {
                    "200": {**_json("Order", "Order placed (or, with a replayed Idempotency-Key, the first "
                                    "request's order)."),
                            "headers": {"Idempotent-Replayed": {
                                "description": "Present (true) when this is the stored answer to an earlier "
                                               "request with the same Idempotency-Key.",
                                "schema": {"type": "string", "enum": ["true"]}}}},
                    "400": _error("Malformed body, field or Idempotency-Key; nothing was written."),
                    "403": _error("queue_pass_required, queue_pass_invalid, queue_pass_expired (with expired_at) or "
                                  "queue_pass_used: the product has a waiting room and the Queue-Pass is missing, "
                                  "forged, another buyer's or product's, of an earlier opening of the room, "
                                  "expired, or has bought already (a pass buys once; a retry with the same "
                                  "Idempotency-Key gets that order back)."),
                    "404": _error("No such product."),
                    "409": _error("out_of_stock (with remaining: sold out for good when 0), units_held (none "
                                  "available but units held by checkouts may come back; Retry-After until the "
                                  "next hold runs out), limit_reached (with limit; held units count), "
                                  "request_in_progress (the same Idempotency-Key is being processed), "
                                  "sale_not_started (with starts_at; Retry-After: whole seconds to the start) or "
                                  "sale_ended (with ends_at).",
                                  retry_after=True),
                    "422": _error("idempotency_key_reused: the key was used with another body."),
                    "429": _error("rate_limited or banned.", retry_after=True),
                    "503": purchase_unavailable,
                },
            }},
            "/checkouts": {"post": {
                "operationId": "createCheckout",
                "summary": "Hold units of a product while the buyer pays (the product's hold_seconds).",
                "description": "The same body, headers, limits and refusals as POST /purchase; the units leave "
                               "available for held. Confirm the checkout to turn it into an order, or release "
                               "it. A retry with the same Idempotency-Key and body returns the same checkout.",
                "parameters": purchase_parameters,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/PurchaseRequest"}}}},
                "responses": {
                    "201": {**_json("Checkout", "Units held until expires_at (PostgreSQL's clock)."),
                            "headers": {"Location": {"schema": {"type": "string"}}}},
                    "200": _json("Checkout", "The checkout an earlier request with this Idempotency-Key took "
                                             "(Idempotent-Replayed: true)."),
                    "400": _error("Malformed body, field or Idempotency-Key; nothing was written."),
                    "403": _error("As for POST /purchase: the waiting room's pass (a pass takes one checkout)."),
                    "404": _error("No such product."),
                    "409": _error("As for POST /purchase: out_of_stock, units_held, limit_reached, "
                                  "request_in_progress, sale_not_started, sale_ended.", retry_after=True),
                    "422": _error("idempotency_key_reused: the key was used with another body."),
                    "429": _error("rate_limited or banned.", retry_after=True),
                    "503": purchase_unavailable,  # and payments_unavailable: nothing held, the key may be reused
                },
            }},
            "/checkouts/{checkout_id}": {"get": {
                "operationId": "getCheckout",
                "summary": "Where a checkout stands: held, confirmed (with its order), released or expired.",
                "parameters": [checkout_id],
                "responses": {"200": _json("Checkout", "The checkout."), "404": _error("unknown_checkout."),
                              "503": unavailable},
            }},
            "/checkouts/{checkout_id}/confirm": {"post": {
                "operationId": "confirmCheckout",
                "summary": "Turn the hold into its order; idempotent.",
                "description": "A hold that ran out is re-booked if its units can still be taken from what is "
                               "available; otherwise 409 hold_expired, nothing sold.",
                "parameters": [checkout_id],
                "responses": {
                    "200": _json("Order", "The checkout's order (Idempotent-Replayed: true when it was confirmed "
                                          "before)."),
                    "404": _error("unknown_checkout."),
                    "409": _error("hold_expired (its units went to other buyers), checkout_released, "
                                  "sale_ended or limit_reached (a re-booking is a new sale), or payment_required "
                                  "(a paid checkout not paid yet: its payment confirms it); nothing sold."),
                    "503": unavailable,
                },
            }},
            "/checkouts/{checkout_id}/release": {"post": {
                "operationId": "releaseCheckout",
                "summary": "Give the held units back at once; idempotent.",
                "parameters": [checkout_id],
                "responses": {
                    "200": _json("Checkout", "The checkout, released (or expired, if its time had run out)."),
                    "404": _error("unknown_checkout."),
                    "409": _error("checkout_confirmed (with order_id): a confirmed checkout is not released."),
                    "503": unavailable,
                },
            }},
            "/orders": {"get": {
                "operationId": "listOwnOrders",
                "summary": "The verified buyer's own orders, newest first (at most 100).",
                "description": "With HC_BUYER_AUTH=jwt only (Authorization: Bearer); otherwise 404.",
                "responses": {
                    "200": {"description": "The orders.", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["user_id", "orders"],
                        "properties": {"user_id": identifier, "orders": {"type": "array", "items": {
                            "type": "object",
                            "required": ["order_id", "product_id", "quantity", "created_at", "replica"],
                            "properties": {"order_id": {"type": "integer", "minimum": 1},
                                           "product_id": identifier,
                                           "quantity": {"type": "integer", "minimum": 1},
                                           "created_at": {"type": "string", "format": "date-time"},
                                           "replica": {"type": "string"},
                                           "checkout_id": {"type": "string"}}}}}}}}},
                    "401": _error("invalid_token: no or a bad bearer token."),
                    "404": _error("not_found: the service does not verify buyers (HC_BUYER_AUTH=none)."),
                    "503": unavailable,
                },
            }},
            "/webhooks/payments": {"post": {
                "operationId": "paymentWebhook",
                "summary": "The payment provider's events (Stripe's webhook, signature verified).",
                "description": "Stripe-Signature is verified with the official stripe library (300 s tolerance); "
                               "the payment is then settled from what the provider says of it now. 404 with "
                               "HC_PAYMENTS=off.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": {"description": "Settled and recorded.", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["received", "duplicate"],
                        "properties": {"received": {"type": "string"}, "duplicate": {"type": "boolean"}}}}}},
                    "400": _error("invalid_signature: not the provider's, or too old; nothing changed."),
                    "404": _error("not_found: payments are off."),
                    "503": _error("The provider or PostgreSQL unreachable: nothing settled; delivered again later."),
                },
            }},
            "/demo/sign-in": {"post": {
                "operationId": "demoSignIn",
                "summary": "Demo only: a token of the local issuer for any name, no password asked.",
                "description": "On only with HC_DEMO_SIGNIN (the local issuer of `up --buyer-auth jwt`), for the "
                               "buyer page's demo; otherwise 404. It proves nothing about who the buyer is.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$"}}}}}},
                "responses": {
                    "200": {"description": "A bearer token for the name.", "content": {"application/json": {
                        "schema": {"type": "object", "required": ["token", "subject", "demo", "expires_at"],
                                   "properties": {"token": {"type": "string"}, "subject": {"type": "string"},
                                                  "demo": {"const": True},
                                                  "expires_at": {"type": "string", "format": "date-time"}}}}}},
                    "400": _error("invalid_request: the name is not 1-64 letters, digits, '.', '_', '@', '-'."),
                    "404": _error("not_found: the demo sign-in is off."),
                },
            }},
            "/products": {"get": {
                "operationId": "listProducts",
                "summary": "Every product with its stock, sale window and status.",
                "responses": {"200": _json("ProductList", "The products."), "503": unavailable},
            }},
            "/products/{product_id}": {"get": {
                "operationId": "getProduct",
                "summary": "One product with its stock.",
                "parameters": [product_id],
                "responses": {"200": _json("Product", "The product."), "404": _error("No such product."),
                              "503": unavailable},
            }},
            "/products/{product_id}/queue": {"post": {
                "operationId": "joinQueue",
                "summary": "Join a product's waiting room; the same buyer joining again gets the same ticket.",
                "parameters": [product_id],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/JoinRequest"}}}},
                "responses": {
                    "202": _json("Ticket", "In line: the ticket, and where it stands now."),
                    "400": _error("Malformed body or user_id."),
                    "404": _error("No such product."),
                    "409": _error("no_waiting_room: buy the product directly; sale_ended or out_of_stock "
                                  "(remaining 0): the room admits nobody, and the join took no place (a buyer "
                                  "who joined before gets its ticket back)."),
                    "429": _error("rate_limited or banned.", retry_after=True),
                    "503": _error("overloaded, or the queue's store (Redis) is unreachable.", retry_after=True),
                },
            }},
            "/queue/{ticket}": {"get": {
                "operationId": "readTicket",
                "summary": "Where a ticket stands: waiting (position, estimated wait), admitted (with the pass), "
                           "expired, sold_out or ended. Answered from memory; poll it about once a second.",
                "parameters": [{"name": "ticket", "in": "path", "required": True,
                                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,200}$"}}],
                "responses": {
                    "200": _json("Standing", "Where the ticket stands."),
                    "404": _error("unknown_ticket: forged, or its product no longer exists."),
                    "409": _error("no_waiting_room: the product's room was closed; buy directly."),
                },
            }},
            **_admin_paths(product_id),
            "/healthz": {"get": {
                "operationId": "health",
                "summary": "The process answers.",
                "responses": {"200": _json("Health", "Up.")},
            }},
            "/readyz": {"get": {
                "operationId": "ready",
                "summary": "PostgreSQL and Redis answer too.",
                "responses": {"200": _json("Ready", "Ready."), "503": _json("Ready", "Not ready; says which.")},
            }},
            "/metrics": {"get": {
                "operationId": "metrics",
                "summary": "Prometheus text format.",
                "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {
                    "schema": {"type": "string"}}}}},
            }},
        },
        "components": {"schemas": {
            "PurchaseRequest": {
                "type": "object", "additionalProperties": False,
                "required": ["user_id", "product_id", "quantity"],
                "properties": {
                    "user_id": identifier,
                    "product_id": identifier,
                    "quantity": {"type": "integer", "minimum": 1, "maximum": settings.max_quantity},
                },
            },
            "JoinRequest": {
                "type": "object", "additionalProperties": False, "required": ["user_id"],
                "properties": {"user_id": identifier},
            },
            "Standing": {
                "type": "object", "additionalProperties": False,
                "required": ["product_id", *_standing()], "properties": {"product_id": identifier, **_standing()},
            },
            "Ticket": {
                "type": "object", "additionalProperties": False,
                "required": ["ticket", "product_id", *_standing()],
                "properties": {"ticket": {"type": "string", "description": "Signed: keep it, poll with it."},
                               "product_id": identifier, **_standing()},
            },
            "Order": {
                "type": "object", "additionalProperties": False,
                "required": ["message", "order_id", "user_id", "product_id", "quantity", "created_at", "replica"],
                "properties": {
                    "message": {"const": "Order placed successfully"},
                    "order_id": {"type": "integer", "minimum": 1},
                    "user_id": identifier,
                    "product_id": identifier,
                    "quantity": {"type": "integer", "minimum": 1},
                    "created_at": {"type": "string", "format": "date-time"},
                    "replica": {"type": "string"},
                    "checkout_id": {"type": "string", "description": "The checkout it confirmed, if any."},
                },
            },
            "Checkout": {
                "type": "object", "additionalProperties": False,
                "required": ["checkout_id", "status", "user_id", "product_id", "quantity", "created_at",
                             "expires_at", "replica"],
                "properties": {
                    "checkout_id": {"type": "string", "description": "Opaque and unguessable: keep it private."},
                    "status": {"enum": ["held", "confirmed", "released", "expired"]},
                    "user_id": identifier,
                    "product_id": identifier,
                    "quantity": {"type": "integer", "minimum": 1},
                    "created_at": {"type": "string", "format": "date-time"},
                    "expires_at": {"type": "string", "format": "date-time"},
                    "ended_at": {"type": "string", "format": "date-time"},
                    "order_id": {"type": "integer", "minimum": 1},
                    "rebooked": {"type": "boolean", "description": "Confirmed after its hold ran out."},
                    "replica": {"type": "string"},
                    "payment": {
                        "type": "object", "additionalProperties": False,
                        "required": ["status", "amount", "currency", "intent_id", "client_secret"],
                        "description": "HC_PAYMENTS on, a priced product: the payment that confirms the checkout.",
                        "properties": {
                            "status": {"enum": ["pending", "capturing", "captured", "cancelling", "cancelled"],
                                       "description": "cancelled: no money moved (not paid in time, released, "
                                                      "or paid after its units were sold)."},
                            "amount": {"type": "integer", "minimum": 0, "description": "Minor units."},
                            "currency": {"type": "string"},
                            "intent_id": {"type": ["string", "null"], "description": "The PaymentIntent."},
                            "client_secret": {"type": ["string", "null"],
                                              "description": "For the provider's payment form (Stripe.js)."},
                            "pay_url": {"type": ["string", "null"],
                                        "description": "The simulator's payment page, while it can be paid."},
                        },
                    },
                },
            },
            "CheckoutList": {
                "type": "object", "additionalProperties": False, "required": ["checkouts"],
                "properties": {"checkouts": {"type": "array", "items": {"$ref": "#/components/schemas/Checkout"}}},
            },
            "Product": {
                "type": "object", "additionalProperties": False, "required": _required(settings),
                "properties": _product(settings),
            },
            "AdminProduct": {
                "type": "object", "additionalProperties": False, "required": [*_required(settings), "orders"],
                "properties": {**_product(settings), "sold": {"type": "integer", "minimum": 0},
                               "orders": {"type": "integer", "minimum": 0}},
            },
            "AdminProductList": {
                "type": "object", "additionalProperties": False, "required": ["products"],
                "properties": {"products": {"type": "array",
                                            "items": {"$ref": "#/components/schemas/AdminProduct"}}},
            },
            "NewProduct": {
                "type": "object", "additionalProperties": False, "required": ["name", "stock"],
                "properties": _product_input(settings),
            },
            "ProductChanges": {
                "type": "object", "additionalProperties": False, "minProperties": 1,
                "description": "Only the fields given change. A new stock keeps the orders: initial_stock becomes "
                               "stock + units sold.",
                "properties": _product_input(settings),
            },
            "Reset": {
                "type": "object", "additionalProperties": False,
                "description": "Set stock and initial stock (default: the initial stock) and delete the product's "
                               "orders; per_user_limit null removes the limit.",
                "properties": {"stock": _product_input(settings)["stock"],
                               "per_user_limit": _product_input(settings)["per_user_limit"]},
            },
            "ResetResult": {
                "type": "object", "additionalProperties": False,
                "required": ["product_id", "stock", "deleted_orders", "announced"],
                "properties": {"product_id": identifier, "stock": {"type": "integer", "minimum": 0},
                               "deleted_orders": {"type": "integer", "minimum": 0},
                               "announced": {"type": "boolean"}},
            },
            "Deleted": {
                "type": "object", "additionalProperties": False, "required": ["deleted", "deleted_orders"],
                "properties": {"deleted": identifier, "deleted_orders": {"type": "integer", "minimum": 0}},
            },
            "ProductList": {
                "type": "object", "additionalProperties": False, "required": ["products"],
                "properties": {"products": {"type": "array", "items": {"$ref": "#/components/schemas/Product"}}},
            },
            "Health": {
                "type": "object", "required": ["status", "replica"],
                "properties": {"status": {"const": "ok"}, "replica": {"type": "string"}},
            },
            "Ready": {
                "type": "object", "required": ["status", "postgres", "redis", "stopping", "replica"],
                "properties": {
                    "status": {"enum": ["ready", "unavailable"]},
                    "postgres": {"enum": ["ok", "unreachable"]},
                    "redis": {"enum": ["ok", "unreachable"]},
                    "stopping": {"type": "boolean"},
                    "replica": {"type": "string"},
                },
            },
            "Error": {
                "type": "object", "additionalProperties": False, "required": ["error"],
                "properties": {"error": {
                    "type": "object", "additionalProperties": False, "required": ["code", "message"],
                    "properties": {
                        "code": {"enum": ERROR_CODES},
                        "message": {"type": "string"},
                        "remaining": {"type": "integer", "minimum": 0},
                        "limit": {"type": "integer", "minimum": 1},
                        "starts_at": {"type": "string", "format": "date-time"},
                        "ends_at": {"type": "string", "format": "date-time"},
                        "orders": {"type": "integer", "minimum": 1},
                        "expired_at": {"type": "string", "format": "date-time"},
                        "held": {"type": "integer", "minimum": 1, "description": "units_held: units held by "
                                 "checkouts, which may come back (Retry-After: until the next hold runs out)."},
                        "order_id": {"type": "integer", "minimum": 1},
                        "outcome": {"enum": ["nothing_sold", "unknown"], "description": "503 only: nothing_sold "
                                    "when that is certain; unknown when the connection broke while committing "
                                    "(retry with the same Idempotency-Key to learn the outcome)."},
                    },
                }},
            },
        }, "securitySchemes": {
            "adminToken": {"type": "http", "scheme": "bearer",
                           "description": "The admin token (HC_ADMIN_TOKEN). Wrong tokens count as failed logins."},
        }},
    }


def _product(settings: Settings) -> dict[str, Any]:
    """A product's fields as the API shows them."""
    when = {"type": ["string", "null"], "format": "date-time"}
    return {
        "id": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "name": {"type": "string"},
        "stock": {"type": "integer", "minimum": 0, "description": "The original's field: the same as available."},
        "available": {"type": "integer", "minimum": 0,
                      "description": "Units a purchase or a checkout can take now (a hold that ran out counts)."},
        "held": {"type": "integer", "minimum": 0, "description": "Units held by checkouts whose hold still runs."},
        "sold": {"type": "integer", "minimum": 0,
                 "description": "Units ordered. available + held + sold = initial_stock."},
        "initial_stock": {"type": "integer", "minimum": 0},
        "hold_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_HOLD_SECONDS,
                         "description": "How long a checkout holds its units."},
        "price": {"type": "integer", "minimum": 0, "maximum": MAX_PRICE,
                  "description": "A unit's price in the currency's minor units (cents for usd); 0: free."},
        "currency": {"type": "string", "pattern": "^[a-z]{3}$", "description": "ISO 4217, lower case."},
        "per_user_limit": {"type": ["integer", "null"], "minimum": 1},
        "max_per_order": {"type": "integer", "minimum": 1, "maximum": settings.max_quantity,
                          "description": "The most units one order may ask for (the product's own, at most the "
                                         "service's)."},
        "starts_at": {**when, "description": "Purchases before it get 409 sale_not_started; null: on sale now."},
        "ends_at": {**when, "description": "Purchases from it on get 409 sale_ended; null: no end."},
        "status": {"enum": ["scheduled", "live", "held", "sold_out", "ended"],
                   "description": "held: none available, but units held by checkouts may come back."},
        "waiting_room": {"type": "boolean", "description": "Buyers join POST /products/{id}/queue and buy with "
                                                           "the pass they are given (Queue-Pass)."},
        "admit_per_second": {"type": "integer", "minimum": 1, "description": "Waiting room only."},
        "pass_seconds": {"type": "integer", "minimum": 1, "description": "Waiting room only."},
    }


def _required(settings: Settings) -> list[str]:
    """Every field of a product but the waiting room's own, shown only when it has one."""
    return [name for name in _product(settings) if name not in ("admit_per_second", "pass_seconds")]


def _standing() -> dict[str, Any]:
    """Where a ticket stands (GET /queue/{ticket}, and the answer to joining)."""
    return {
        "status": {"enum": ["waiting", "admitted", "expired", "sold_out", "ended"]},
        "position": {"type": ["integer", "null"], "minimum": 0,
                     "description": "Tickets to be admitted before this one, itself included; 0 once admitted."},
        "estimated_wait_s": {"type": ["integer", "null"], "minimum": 0},
        "pass": {"type": ["string", "null"], "description": "Admitted only: send it as Queue-Pass."},
        "pass_expires_at": {"type": ["string", "null"], "format": "date-time"},
    }


def _product_input(settings: Settings) -> dict[str, Any]:
    """A product's fields as an operator sets them."""
    when = {"anyOf": [{"type": "string", "maxLength": 64}, {"type": "null"}],
            "description": "ISO 8601 with a UTC offset (2026-12-01T10:00:00+01:00 or ...Z), +SECONDS from now, "
                           "now, or null (none)."}
    return {
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "stock": {"type": "integer", "minimum": 0, "maximum": MAX_UNITS},
        "per_user_limit": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_UNITS}, {"type": "null"}]},
        "max_per_order": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": settings.max_quantity},
                                    {"type": "null"}]},
        "starts_at": when,
        "ends_at": when,
        "waiting_room": {"type": "boolean"},
        "admit_per_second": {"type": "integer", "minimum": 1, "maximum": MAX_ADMIT_PER_SECOND,
                             "description": "Changed during a sale, admission counts on from the admissions so far."},
        "pass_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_PASS_SECONDS},
        "hold_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_HOLD_SECONDS},
        "price": {"type": "integer", "minimum": 0, "maximum": MAX_PRICE},
        "currency": {"type": "string", "pattern": "^[A-Za-z]{3}$", "description": "ISO 4217 (e.g. usd, EUR)."},
    }


def _admin_paths(product_id: dict[str, Any]) -> dict[str, Any]:
    secured = {"security": [{"adminToken": []}], "tags": ["admin"]}
    common = {
        "400": _error("A bad field or body; nothing was written."),
        "401": {**_error("Missing or wrong admin token."), "headers": {"WWW-Authenticate": {
            "description": "Bearer.", "schema": {"type": "string"}}}},
        "429": _error("Too many failed admin logins from this address (or in total).", retry_after=True),
        "503": _error("PostgreSQL unreachable, or Redis (failed attempts cannot be counted, so the API is "
                      "closed)."),
    }
    one = {**common, "404": _error("No such product.")}

    def request(schema: str, required: bool = True) -> dict[str, Any]:
        return {"required": required, "content": {"application/json": {"schema": {
            "$ref": f"#/components/schemas/{schema}"}}}}

    return {
        "/admin/api/products": {
            "get": {**secured, "operationId": "adminListProducts", "summary": "Every product, with sold and orders.",
                    "responses": {"200": _json("AdminProductList", "The products."), **common}},
            "post": {**secured, "operationId": "adminCreateProduct", "summary": "Create a product (a sale).",
                     "requestBody": request("NewProduct"),
                     "responses": {"201": {**_json("Product", "Created."), "headers": {"Location": {
                         "description": "The product's admin URL.", "schema": {"type": "string"}}}}, **common}},
        },
        "/admin/api/products/{product_id}": {
            "get": {**secured, "parameters": [product_id], "operationId": "adminGetProduct",
                    "summary": "One product, with sold and orders.",
                    "responses": {"200": _json("AdminProduct", "The product."), **one}},
            "patch": {**secured, "parameters": [product_id], "operationId": "adminUpdateProduct",
                      "summary": "Change a product's name, stock, window or limits.",
                      "requestBody": request("ProductChanges"),
                      "responses": {"200": _json("Product", "As changed."), **one}},
            "delete": {**secured, "operationId": "adminDeleteProduct",
                       "summary": "Delete a product; refused while it has orders unless with_orders=true.",
                       "parameters": [product_id, {"name": "with_orders", "in": "query", "required": False,
                                       "schema": {"type": "boolean"}}],
                       "responses": {"200": _json("Deleted", "Deleted."),
                                     "409": _error("has_orders: the product has orders."), **one}},
        },
        "/admin/api/products/{product_id}/reset": {
            "post": {**secured, "parameters": [product_id], "operationId": "adminResetProduct",
                     "summary": "Set the stock and delete the product's orders.",
                     "requestBody": request("Reset", required=False),
                     "responses": {"200": _json("ResetResult", "Reset."), **one}},
        },
        "/admin/api/checkouts": {
            "get": {**secured, "operationId": "adminListCheckouts",
                    "summary": "Running holds, the soonest to expire first.",
                    "parameters": [
                        {"name": "product_id", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                    "responses": {"200": _json("CheckoutList", "The holds."), **common}},
        },
        "/admin/api/checkouts/{checkout_id}/release": {
            "post": {**secured, "operationId": "adminReleaseCheckout",
                     "summary": "Give a hold's units back at once (as its buyer's release does).",
                     "parameters": [{"name": "checkout_id", "in": "path", "required": True,
                                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}],
                     "responses": {"200": _json("Checkout", "Released (or as it already was)."),
                                   "404": _error("unknown_checkout."),
                                   "409": _error("checkout_confirmed: a confirmed checkout is not released."),
                                   **common}},
        },
    }


class OpenApiHandler(JsonHandler):
    route = "/openapi.json"

    def get(self) -> None:
        self.write_json(document(self.services.settings))


default_handlers = [(r"/openapi.json", OpenApiHandler)]
