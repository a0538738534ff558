-- Paid checkout (issue 26): 'cancelling', the claim a replica makes before it cancels a payment at the provider.
-- Without it, a replica that read a payment as unpaid could cancel it at the very moment another replica, told it
-- was authorized, committed its order: an order whose money can no longer be taken. A checkout's payment is
-- cancelled only from 'cancelling', and an order is committed for it only from 'pending' (store/holds.py), so
-- whichever of the two moves first, the other finds the payment no longer pending and settles it as it now is.
ALTER TABLE checkouts DROP CONSTRAINT IF EXISTS checkouts_payment_status_check;
ALTER TABLE checkouts ADD CONSTRAINT checkouts_payment_status_check
    CHECK (payment_status IN ('pending', 'capturing', 'captured', 'cancelling', 'cancelled'));
DROP INDEX IF EXISTS checkouts_payment_open;
CREATE INDEX IF NOT EXISTS checkouts_payment_open ON checkouts (expires_at)
    WHERE payment_status IN ('pending', 'capturing', 'cancelling');
