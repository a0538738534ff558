-- A waiting room's pass admits one purchase: an order bought with a pass carries the opening of the room
-- (room_generation) the pass was given in, and a buyer has one place per opening, so (product, opening, buyer)
-- names the pass. The unique index is the last word when two purchases with one pass race; each strategy also
-- checks under the product's row lock, so a batch refuses the second instead of failing whole.
-- Orders bought without a room carry NULL and are not in the index. Adding a nullable column rewrites nothing.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS room_generation bigint;
CREATE UNIQUE INDEX IF NOT EXISTS orders_one_per_pass ON orders (product_id, room_generation, user_id)
    WHERE room_generation IS NOT NULL;
