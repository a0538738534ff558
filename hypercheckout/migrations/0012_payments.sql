-- Paid checkout (issue 26): with HC_PAYMENTS on, a checkout of a priced product is paid through a PaymentIntent
-- with manual capture, and the payment, not the buyer, confirms it. What the checkout owes is fixed when it is
-- taken (amount = price x quantity then), whatever the price becomes.
--
-- payment_status, NULL for a checkout without payment:
--   pending    the buyer has not paid (yet); a declined card leaves it here until the hold runs out
--   capturing  the order is committed (in the statement that set this), the money not yet taken
--   captured   the money is taken: one capture per checkout, only ever after its order
--   cancelled  no money moves: the authorization (if any) is cancelled, and there is no order
-- So: a checkout has an order iff its payment is capturing or captured, and nothing is captured without an order.
ALTER TABLE checkouts ADD COLUMN IF NOT EXISTS amount bigint NOT NULL DEFAULT 0 CHECK (amount >= 0);
ALTER TABLE checkouts ADD COLUMN IF NOT EXISTS currency text NOT NULL DEFAULT 'usd';
ALTER TABLE checkouts ADD COLUMN IF NOT EXISTS payment_status text
    CHECK (payment_status IN ('pending', 'capturing', 'captured', 'cancelled'));
ALTER TABLE checkouts ADD COLUMN IF NOT EXISTS payment_intent text UNIQUE;  -- the provider's PaymentIntent id
ALTER TABLE checkouts ADD COLUMN IF NOT EXISTS payment_secret text;  -- its client secret: the buyer pays with it
ALTER TABLE checkouts ADD COLUMN IF NOT EXISTS payment_checked_at timestamptz;  -- last settled with the provider
ALTER TABLE checkouts DROP CONSTRAINT IF EXISTS checkouts_paid_order;
ALTER TABLE checkouts ADD CONSTRAINT checkouts_paid_order
    CHECK (payment_status IS NULL OR (order_id IS NOT NULL) = (payment_status IN ('capturing', 'captured')));
-- The reconciler's question: which payments are open (not paid and settled, not cancelled).
CREATE INDEX IF NOT EXISTS checkouts_payment_open ON checkouts (expires_at)
    WHERE payment_status IN ('pending', 'capturing');

-- Every webhook event received, once (Stripe may deliver one any number of times, in any order).
CREATE TABLE IF NOT EXISTS payment_events (
    id             text        PRIMARY KEY,
    type           text        NOT NULL,
    payment_intent text,
    received_at    timestamptz NOT NULL DEFAULT now()
);
