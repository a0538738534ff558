-- A waiting room's places live in PostgreSQL, beside the stock: a Redis that loses its data can no longer number
-- newcomers ahead of buyers already waiting, and closing and reopening a room starts a new line (a generation)
-- whose tickets share nothing with the old one's.
--
-- The line: place P is admitted once admitted_before + admit_per_second x (t - GREATEST(admission_origin,
-- starts_at)) reaches P. A joiner's place is one past the later of the last place given and the line's position
-- now, so a late joiner is admitted within one slot and a line nobody stood in does not admit a burst. A change of
-- rate or start moves the line on from where it stands (admission_history keeps the segments before, as
-- [origin epoch, admitted_before, rate], so a pass admitted earlier keeps its expiry).
ALTER TABLE products
    ADD COLUMN IF NOT EXISTS room_generation   bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS admission_history jsonb NOT NULL DEFAULT '[]';

-- One row per line: its last place. Apart from the products row, so joins never wait on the stock's hot row.
CREATE TABLE IF NOT EXISTS queue_lines (
    product_id bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    generation bigint NOT NULL,
    last_place bigint NOT NULL,
    PRIMARY KEY (product_id, generation)
);

-- One place per buyer per line: joining again answers the same place.
CREATE TABLE IF NOT EXISTS queue_places (
    product_id bigint NOT NULL,
    generation bigint NOT NULL,
    user_id    bigint NOT NULL,
    place      bigint NOT NULL,
    joined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (product_id, generation, user_id),
    FOREIGN KEY (product_id, generation) REFERENCES queue_lines (product_id, generation) ON DELETE CASCADE
);
