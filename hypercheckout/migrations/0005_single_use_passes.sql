-- A waiting room's pass admits one purchase: an order bought with a pass carries the opening of the room
-- (room_generation) the pass was given in, and a buyer has one place per opening, so (product, opening, buyer)
-- names the pass. The unique index is the last word when two purchases with one pass race; each strategy also
-- checks under the product's row lock, so a batch refuses the second instead of failing whole.
-- Orders bought without a room carry NULL and are not in the index. Adding a nullable column rewrites nothing.
-- The index itself is built by 0007_one_purchase_per_pass_index.sql, outside a transaction, so that building it over
-- a large orders table does not block purchases (a database that applied this file before has it already).
ALTER TABLE orders ADD COLUMN IF NOT EXISTS room_generation bigint;
