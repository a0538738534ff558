-- Holds (issue 24): a checkout takes units out of stock for hold_seconds while its buyer pays, then is confirmed
-- (an order), released, or expires. products.held counts the units of checkouts still 'held', so that in every
-- committed state, for every product: stock + held + Σ orders.quantity = initial_stock. A hold past its expiry
-- that nothing has swept yet is still 'held' here, but counts as available everywhere it is read
-- (lapsed_units below): it stops counting the moment it expires, and is given back, exactly once, by whoever
-- takes the product's row lock and needs its units first (a purchase short of stock, a confirm, the sweeper).
ALTER TABLE products ADD COLUMN IF NOT EXISTS held integer NOT NULL DEFAULT 0 CHECK (held >= 0);
ALTER TABLE products ADD COLUMN IF NOT EXISTS hold_seconds integer NOT NULL DEFAULT 600
    CHECK (hold_seconds BETWEEN 1 AND 86400);

CREATE TABLE IF NOT EXISTS checkouts (
    id              text        PRIMARY KEY,  -- opaque and unguessable (128 random bits): it is the buyer's handle
    product_id      bigint      NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    user_id         bigint      NOT NULL CHECK (user_id >= 1),
    quantity        integer     NOT NULL CHECK (quantity >= 1),
    status          text        NOT NULL DEFAULT 'held'
                                CHECK (status IN ('held', 'confirmed', 'released', 'expired')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    ended_at        timestamptz,  -- when it left 'held'
    order_id        bigint      REFERENCES orders (id) ON DELETE CASCADE,
    rebooked        boolean     NOT NULL DEFAULT false,  -- confirmed after expiry, from units still available
    replica         text        NOT NULL,
    -- The waiting room's opening whose pass took this hold: a pass takes one checkout (and so buys once).
    room_generation bigint,
    -- POST /checkouts's Idempotency-Key and the request it was bound to: a retry replays this checkout.
    idempotency_key text        UNIQUE,
    fingerprint     text,
    CHECK ((status = 'confirmed') = (order_id IS NOT NULL)),
    CHECK ((status = 'held') = (ended_at IS NULL))
);
-- What is held per product, in expiry order: lapsed holds to give back, the next expiry (Retry-After).
CREATE INDEX IF NOT EXISTS checkouts_held_by_product ON checkouts (product_id, expires_at) WHERE status = 'held';
-- The sweeper's question across products: which holds have lapsed.
CREATE INDEX IF NOT EXISTS checkouts_held_by_expiry ON checkouts (expires_at) WHERE status = 'held';
-- A buyer's held units of a product (per-user limits count held and bought units).
CREATE INDEX IF NOT EXISTS checkouts_held_by_buyer ON checkouts (product_id, user_id) WHERE status = 'held';
CREATE UNIQUE INDEX IF NOT EXISTS checkouts_one_per_pass ON checkouts (product_id, room_generation, user_id)
    WHERE room_generation IS NOT NULL;
-- The dashboard's and the CLI's list of holds; a buyer's checkouts.
CREATE INDEX IF NOT EXISTS checkouts_by_product ON checkouts (product_id, created_at);

-- Units of a product held by checkouts whose hold has lapsed but that nothing has given back yet: available.
CREATE OR REPLACE FUNCTION lapsed_units(product bigint) RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT COALESCE(sum(quantity), 0)::integer FROM checkouts
    WHERE product_id = product AND status = 'held' AND expires_at <= now()
$$;
