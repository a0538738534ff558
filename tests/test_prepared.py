"""store/prepared.py without a database: how a statement with psycopg2's placeholders becomes PREPARE and EXECUTE.
Running them against PostgreSQL: tests/test_batched.py and tests/test_holds.py."""

from __future__ import annotations

import pytest

from hypercheckout.store import holds, purchases
from hypercheckout.store.prepared import Prepared


def test_placeholders_become_numbered_parameters_in_the_order_of_their_types() -> None:
    statement = Prepared("s", "SELECT %(b)s::int + %(a)s, %(b)s", {"a": "integer", "b": "bigint"},
                         before="BEGIN;", after="COMMIT;")
    assert statement.prepare_sql == "PREPARE s (integer, bigint) AS SELECT $2::int + $1, $2"
    assert statement.execute_sql == "BEGIN; EXECUTE s (%(a)s, %(b)s); COMMIT;"


def test_a_placeholder_without_a_type_is_refused_where_the_statement_is_written() -> None:
    with pytest.raises(ValueError, match="quantity"):
        Prepared("s", "SELECT %(quantity)s", {})


def test_every_prepared_statement_has_a_name_of_its_own() -> None:
    """A connection knows a prepared statement by its name: two of one name would fail the second PREPARE."""
    found = [value for module in (purchases, holds) for value in vars(module).values() if isinstance(value, Prepared)]
    names = [statement.name for statement in found]
    assert len(names) == 6 and len(set(names)) == len(names)
