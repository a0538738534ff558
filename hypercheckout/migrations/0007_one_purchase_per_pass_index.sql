-- hypercheckout: no-transaction
-- The unique index behind one purchase per pass (0005_single_use_passes.sql), built CONCURRENTLY: inside a
-- transaction CREATE INDEX holds a lock that blocks every INSERT into orders until the whole table is indexed —
-- every purchase of every product, for as long as that takes on a large table. A database that had it from 0005
-- keeps it (IF NOT EXISTS).
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS orders_one_per_pass ON orders (product_id, room_generation, user_id)
    WHERE room_generation IS NOT NULL;
