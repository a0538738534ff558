
CREATE TABLE IF NOT EXISTS products (
    id             bigserial PRIMARY KEY,
    name           text    NOT NULL,
    stock          integer NOT NULL CHECK (stock >= 0),
    initial_stock  integer NOT NULL CHECK (initial_stock >= 0),
    per_user_limit integer CHECK (per_user_limit IS NULL OR per_user_limit >= 1)
);
CREATE TABLE IF NOT EXISTS orders (
    id         bigserial   PRIMARY KEY,
    user_id    bigint      NOT NULL CHECK (user_id >= 1),
    product_id bigint      NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    quantity   integer     NOT NULL CHECK (quantity >= 1),
    created_at timestamptz NOT NULL DEFAULT now(),
    replica    text        NOT NULL
);
-- Σ quantity per product (status, invariant checks) and "last N orders of a product" (dashboard).
CREATE INDEX IF NOT EXISTS orders_product_id_idx ON orders (product_id, id);
-- A buyer's orders of one product (per-user limits).
CREATE INDEX IF NOT EXISTS orders_product_user_idx ON orders (product_id, user_id);
-- Idempotency-Key → the order its first request placed. Written in the transaction that inserts that order, so an
-- acknowledged order and its key cannot disagree. The reference is checked at COMMIT: a batch claims keys for the
-- order ids it has reserved before it inserts the orders. A refused request leaves no row (nothing to replay).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key         text        PRIMARY KEY,
    fingerprint text        NOT NULL,
    order_id    bigint      NOT NULL REFERENCES orders (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at_idx ON idempotency_keys (created_at);

