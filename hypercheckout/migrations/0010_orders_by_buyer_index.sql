-- hypercheckout: no-transaction
-- A buyer's own orders (GET /orders, with verified buyers), newest first. Built CONCURRENTLY, as 0007 is: inside a
-- transaction the build would block every purchase until the whole orders table is indexed.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_by_buyer ON orders (user_id, id);
