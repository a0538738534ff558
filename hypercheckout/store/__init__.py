"""Every SQL statement HyperCheckout runs, a module per concern, and the connection pool.

- ``purchases``: each strategy's statements, per-user limits, Idempotency-Keys;
- ``products``: reading the catalogue and an operator's changes to it;
- ``line``: a waiting room's line — where it stands, places, its figures, passes used;
- ``models``: what those statements hand out and take in;
- ``pool``: connections, a multi-host URL, the database created when missing;
- ``database``: ``Store``, which runs them (the schema's migrations: ``hypercheckout.migrations.runner``).

All statements are parameterised; each one that touches stock says why it is safe under concurrency.
"""

from hypercheckout.store.database import Store
from hypercheckout.store.models import (
    DEFAULT_ADMIT_PER_SECOND,
    DEFAULT_HOLD_SECONDS,
    DEFAULT_PASS_SECONDS,
    MAX_HOLD_SECONDS,
    MAX_PASS_SECONDS,
    UPDATABLE,
    BatchLock,
    LockedStock,
    Product,
    ProductChanges,
    ProductStatus,
    SaleRules,
    StoredOrder,
    WaitingRoom,
)
from hypercheckout.store.pool import CONNECTION_ERRORS, _create_pool, ensure_database, split_hosts

__all__ = [
    "CONNECTION_ERRORS", "DEFAULT_ADMIT_PER_SECOND", "DEFAULT_HOLD_SECONDS", "DEFAULT_PASS_SECONDS",
    "MAX_HOLD_SECONDS", "MAX_PASS_SECONDS", "UPDATABLE",
    "BatchLock", "LockedStock", "Product", "ProductChanges", "ProductStatus", "SaleRules", "Store", "StoredOrder",
    "WaitingRoom", "_create_pool", "ensure_database", "split_hosts",
]
