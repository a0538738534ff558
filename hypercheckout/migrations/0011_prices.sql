-- Paid checkout (issue 26): what a unit costs, in the currency's minor units (cents for USD, yen for JPY), as
-- Stripe takes amounts. 0 is free: a product sold without payment, as every product was before this migration.
ALTER TABLE products ADD COLUMN IF NOT EXISTS price bigint NOT NULL DEFAULT 0 CHECK (price >= 0);
-- ISO 4217, in lower case as Stripe writes it.
ALTER TABLE products ADD COLUMN IF NOT EXISTS currency text NOT NULL DEFAULT 'usd' CHECK (currency ~ '^[a-z]{3}$');
