"""GET /openapi.json: the OpenAPI 3.1 description of the public API, built from the settings in force (the largest
quantity is the replica's own). tests/test_openapi.py holds the handlers to it with schemathesis."""

from __future__ import annotations

from typing import Any

from hypercheckout.api.base import JsonHandler
from hypercheckout.checkout.validation import MAX_ID
from hypercheckout.settings import Settings

ERROR_CODES = [
    "invalid_request", "not_found", "unknown_product", "out_of_stock", "limit_reached", "request_in_progress",
    "idempotency_key_reused", "rate_limited", "banned", "unavailable", "overloaded", "method_not_allowed",
    "internal_error", "forbidden",
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
                               "A retry with the same Idempotency-Key and body returns the first answer.",
                "parameters": [{
                    "name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "1-255 printable ASCII characters; remembered at least 24 hours.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
                }],
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
                    "404": _error("No such product."),
                    "409": _error("out_of_stock (with remaining), limit_reached (with limit) or "
                                  "request_in_progress (the same Idempotency-Key is being processed).",
                                  retry_after=True),
                    "422": _error("idempotency_key_reused: the key was used with another body."),
                    "429": _error("rate_limited or banned.", retry_after=True),
                    "503": purchase_unavailable,
                },
            }},
            "/products": {"get": {
                "operationId": "listProducts",
                "summary": "Every product with its stock.",
                "responses": {"200": _json("ProductList", "The products."), "503": unavailable},
            }},
            "/products/{product_id}": {"get": {
                "operationId": "getProduct",
                "summary": "One product with its stock.",
                "parameters": [{"name": "product_id", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 999_999_999_999_999_999}}],
                "responses": {"200": _json("Product", "The product."), "404": _error("No such product."),
                              "503": unavailable},
            }},
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
                },
            },
            "Product": {
                "type": "object", "additionalProperties": False,
                "required": ["id", "name", "stock", "initial_stock", "per_user_limit"],
                "properties": {
                    "id": identifier,
                    "name": {"type": "string"},
                    "stock": {"type": "integer", "minimum": 0},
                    "initial_stock": {"type": "integer", "minimum": 0},
                    "per_user_limit": {"type": ["integer", "null"], "minimum": 1},
                },
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
                        "outcome": {"enum": ["nothing_sold", "unknown"], "description": "503 only: nothing_sold "
                                    "when that is certain; unknown when the connection broke while committing "
                                    "(retry with the same Idempotency-Key to learn the outcome)."},
                    },
                }},
            },
        }},
    }


class OpenApiHandler(JsonHandler):
    route = "/openapi.json"

    def get(self) -> None:
        self.write_json(document(self.services.settings))


default_handlers = [(r"/openapi.json", OpenApiHandler)]
