-- Products become sales an operator schedules: an optional window and an optional per-order maximum.
-- Nullable columns without defaults: adding them rewrites no row, and every existing product stays on sale now.
-- IF NOT EXISTS keeps the migration idempotent; the window's constraint rides on its column for the same reason.
ALTER TABLE products
    ADD COLUMN IF NOT EXISTS starts_at     timestamptz,
    ADD COLUMN IF NOT EXISTS ends_at       timestamptz
        CONSTRAINT products_window_check CHECK (starts_at IS NULL OR ends_at IS NULL OR ends_at > starts_at),
    ADD COLUMN IF NOT EXISTS max_per_order integer
        CONSTRAINT products_max_per_order_check CHECK (max_per_order IS NULL OR max_per_order >= 1);
