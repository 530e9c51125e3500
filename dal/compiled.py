"""Hot statements run on the driver's cursor, compiled once from their Core statements.

SQLAlchemy's execution layer (cache lookup, execution context, result object) costs more per
statement than SQLite takes to run one of the fill path's statements. A ``DriverStatement``
does that work once per dialect: it keeps the SQL string Core renders, the order of its
parameters and SQLAlchemy's own bind and result processors for the statement's types, and
then per call only processes the values and runs the SQL on the connection's DBAPI cursor,
inside the connection's transaction. Values go in and come out exactly as through Core (the
same processors: canonical decimal text on SQLite, checked amounts on PostgreSQL), errors
come out as SQLAlchemy's (so deadlock retries and integrity checks work unchanged), and
``before_cursor_execute`` listeners still see every statement.

Only statements whose SQL does not depend on the values qualify: no expanding IN, no
``literal_execute``. tests/test_compiled.py checks each one's SQL against what Core renders.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import ExecuteStyle
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.util import await_only


class _Plan:
    """A statement compiled for one dialect."""

    __slots__ = (
        "compiled", "defaults", "make_row", "names", "processed", "result_columns", "row_type",
        "sql",
    )  # fmt: skip

    def __init__(self, statement: sa.Executable, dialect: Dialect, column_keys: Any) -> None:
        assert isinstance(statement, sa.ClauseElement)
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        assert isinstance(compiled, SQLCompiler)
        sql = compiled.string
        if "POSTCOMPILE" in sql or compiled.positiontup is None:
            raise ValueError("a driver statement needs SQL that does not depend on its values")
        self.sql: str = sql
        self.compiled = compiled
        binds = compiled.binds
        self.names: list[str] = list(compiled.positiontup)
        # (position, processor) of the parameters whose type processes its values.
        self.processed: list[tuple[int, Callable[[Any], Any]]] = [
            (i, process)
            for i, name in enumerate(self.names)
            if (process := binds[name].type._cached_bind_processor(dialect)) is not None
        ]
        # Values the statement carries itself (literals), by name.
        self.defaults = {
            name: bind.effective_value
            for name, bind in binds.items()
            if not bind.required and name in self.names
        }
        # Rows are what the statement asks for: not the primary key PostgreSQL's dialect
        # adds to an INSERT for itself (Core does not hand that back either).
        asks = not isinstance(statement, UpdateBase) or len(statement.exported_columns) > 0
        self.result_columns = (
            [(rc.keyname, rc.type) for rc in compiled._result_columns or ()] if asks else []
        )
        self.row_type: type[tuple[Any, ...]] | None = (
            row_type([name for name, _ in self.result_columns]) if self.result_columns else None
        )
        self.make_row: Callable[[Any], Any] | None = None  # made at the first execution

    def parameters(self, values: Mapping[str, Any]) -> list[Any]:
        if self.defaults:
            values = {**self.defaults, **values}
        out = [values[name] for name in self.names]
        for i, process in self.processed:  # None too, as Core does (a JSON null, say)
            out[i] = process(out[i])
        return out

    def row_maker(self, dialect: Dialect, description: Any) -> Callable[[Any], Any]:
        """Makes a row of the statement's row type from a driver's row, processed as Core
        would (the processors depend on the column types the driver reports)."""
        if self.make_row is None:
            processors = [
                (i, process)
                for i, ((_, type_), column) in enumerate(
                    zip(self.result_columns, description, strict=True)
                )
                if (process := type_._cached_result_processor(dialect, column[1])) is not None
            ]
            row_type = self.row_type
            assert row_type is not None

            def make_row(raw: Any) -> Any:
                row = list(raw)
                for i, process in processors:
                    row[i] = process(row[i])
                return row_type._make(row)  # type: ignore[attr-defined]  # a namedtuple class

            self.make_row = make_row
        return self.make_row


def row_type(names: list[str]) -> type[tuple[Any, ...]]:
    """A row class: a named tuple with ``_mapping``, as Core's rows are read."""
    base = namedtuple("Row", names, rename=True)  # type: ignore[misc]  # row tuples named after the result columns

    class Row(base):  # a namedtuple class made at run time
        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return dict(self._asdict())

    return Row


# Every driver statement made, for the test that compares each with Core.
ALL: list[DriverStatement] = []


class _Context(NamedTuple):
    """What ``before_cursor_execute`` listeners read of an execution context."""

    compiled: Any
    execute_style: ExecuteStyle


class DriverStatement:
    """A Core statement run on the DBAPI cursor; see the module's docstring."""

    def __init__(
        self,
        statement: sa.Executable,
        column_keys: Sequence[str] | None = None,
        dialect: str | None = None,  # the one dialect a dialect-specific statement is for
    ):
        self.statement = statement
        self.dialect = dialect
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._plans: dict[str, _Plan] = {}
        ALL.append(self)

    def plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            plan = self._plans[dialect.name] = _Plan(self.statement, dialect, self.column_keys)
        return plan

    def sql(self, dialect: Dialect) -> str:
        return self.plan(dialect).sql

    def execute(self, conn: sa.Connection, values: Mapping[str, Any]) -> list[Any]:
        """Run with one set of values; the rows it returns (none for a write without
        RETURNING), processed as Core would."""
        plan = self.plan(conn.dialect)
        return _run(conn, plan, plan.parameters(values), many=False)

    def executemany(self, conn: sa.Connection, values: Sequence[Mapping[str, Any]]) -> None:
        """Run once per set of values (a write without RETURNING)."""
        plan = self.plan(conn.dialect)
        _run(conn, plan, [plan.parameters(v) for v in values], many=True)


def _listened(conn: sa.Connection) -> bool:
    """Whether a ``before_cursor_execute`` listener waits (the engine's other events, such as
    SQLite's ``begin``, do not make every statement dispatch one)."""
    return (conn._has_events or conn.engine._has_events) and bool(
        conn.dispatch.before_cursor_execute
    )


def _run(conn: sa.Connection, plan: _Plan, parameters: Any, many: bool) -> list[Any]:
    if conn.dialect.driver == "asyncpg":
        driver = conn.connection.driver_connection
        # Straight to asyncpg only inside a transaction already begun (or in autocommit):
        # the adapter's cursor is what begins one when the engine leaves it to the driver.
        if driver.is_in_transaction() or conn.connection.dbapi_connection.autocommit:  # type: ignore[union-attr]  # an open connection has both
            return _run_on_asyncpg(conn, driver, plan, parameters, many)
    return _run_on_cursor(conn, plan, parameters, many)


def _run_on_cursor(conn: sa.Connection, plan: _Plan, parameters: Any, many: bool) -> list[Any]:
    dialect = conn.dialect
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]  # an open connection has one
    try:
        if _listened(conn):
            style = ExecuteStyle.EXECUTEMANY if many else ExecuteStyle.EXECUTE
            conn.dispatch.before_cursor_execute(
                conn, cursor, plan.sql, parameters, _Context(plan.compiled, style), many
            )
        try:
            if many:
                cursor.executemany(plan.sql, parameters)
                return []
            cursor.execute(plan.sql, parameters)
            if plan.row_type is None:
                return []
            rows = cursor.fetchall()
        except dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DBAPIError.instance(
                plan.sql, parameters, exc, dialect.loaded_dbapi.Error, dialect=dialect
            ) from exc
        make_row = plan.row_maker(dialect, cursor.description)
        return [make_row(row) for row in rows]
    finally:
        cursor.close()


def _run_on_asyncpg(
    conn: sa.Connection, driver: Any, plan: _Plan, parameters: Any, many: bool
) -> list[Any]:
    """``_run_on_cursor`` without SQLAlchemy's asyncpg adapter: the same SQL and values on
    the same connection, awaited from the greenlet the connection is used in; asyncpg's own
    statement cache prepares each statement once per connection."""
    dialect = conn.dialect
    if _listened(conn):
        style = ExecuteStyle.EXECUTEMANY if many else ExecuteStyle.EXECUTE
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]  # an open connection has one
        try:
            conn.dispatch.before_cursor_execute(
                conn, cursor, plan.sql, parameters, _Context(plan.compiled, style), many
            )
        finally:
            cursor.close()
    try:
        if many:
            await_only(driver.executemany(plan.sql, parameters))
            return []
        rows = await_only(driver.fetch(plan.sql, *parameters))
        make_row = plan.make_row
        if plan.row_type is not None and make_row is None:
            attributes = await_only(driver.prepare(plan.sql)).get_attributes()
            make_row = plan.row_maker(dialect, [(a.name, a.type.oid) for a in attributes])
    except Exception as exc:
        raise _as_sqlalchemy_error(conn, plan, parameters, exc) from exc
    if make_row is None:
        return []
    return [make_row(row) for row in rows]


def _as_sqlalchemy_error(
    conn: sa.Connection, plan: _Plan, parameters: Any, exc: Exception
) -> Exception:
    """asyncpg's exception as the SQLAlchemy error the adapter's cursor would have raised; the
    connection is invalidated if it was lost, as Core does."""
    dialect = conn.dialect
    dbapi_connection = conn.connection.dbapi_connection
    try:
        # The adapter's own translation of asyncpg's errors into its DBAPI error classes
        # (a private method, but the one place that mapping lives; tests/test_compiled.py
        # checks that both paths raise the same SQLAlchemy error).
        dbapi_connection._handle_exception(exc)  # type: ignore[union-attr]  # an open connection has one
    except dialect.loaded_dbapi.Error as translated:
        lost = dialect.is_disconnect(translated, dbapi_connection, None)
        if lost:
            conn.invalidate(translated)
        return sa.exc.DBAPIError.instance(
            plan.sql,
            parameters,
            translated,
            dialect.loaded_dbapi.Error,
            dialect=dialect,
            connection_invalidated=lost,
        )
    except Exception as other:  # not a database error: as it came
        return other
    return exc


__all__ = ["DriverStatement", "row_type"]
