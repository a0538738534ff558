-- A product may put its buyers through a waiting room: they join a queue, are admitted first-come at
-- admit_per_second from the sale's start, and buy with a pass valid for pass_seconds.
-- Admission is arithmetic, not a process: admitted(t) = admitted_before + admit_per_second x (t - origin), with
-- origin the later of admission_origin and starts_at. admission_origin is set when the room opens and when the
-- rate changes once admission has begun (admitted_before then keeps the count so far), so every replica computes
-- the same count from the same row and its clock.
-- Constant defaults rewrite no row (PostgreSQL 11+); IF NOT EXISTS keeps the migration idempotent.
ALTER TABLE products
    ADD COLUMN IF NOT EXISTS waiting_room     boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS admit_per_second integer NOT NULL DEFAULT 100
        CONSTRAINT products_admit_per_second_check CHECK (admit_per_second BETWEEN 1 AND 1000000),
    ADD COLUMN IF NOT EXISTS pass_seconds     integer NOT NULL DEFAULT 120
        CONSTRAINT products_pass_seconds_check CHECK (pass_seconds BETWEEN 1 AND 86400),
    ADD COLUMN IF NOT EXISTS admission_origin timestamptz,
    ADD COLUMN IF NOT EXISTS admitted_before  bigint NOT NULL DEFAULT 0;
