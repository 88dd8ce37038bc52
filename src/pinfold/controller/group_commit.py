"""Group commit for the controller's SQLite writers (issue 16).

SQLite takes one writer at a time, and each commit with `synchronous=FULL`
waits for an fsync (4 ms on this project's machine, 14 ms at its p99 under
load). Profiled with 20 sim agents and 8 clients, four fifths of a create's
wall time in the controller went to waiting for the write lock, behind other
writers' commits: every create commits twice (its reservation, then
`running`), every heartbeat once, and each commit had the lock to itself.

Here the writers of one process share a transaction and its commit. One
writer at a time has its turn (a Python lock, as before); its work runs in a
SAVEPOINT of the open transaction, so a writer that fails undoes only its own
work (the group's first writer needs none: its failure rolls back the
transaction, which holds nothing else). When its turn ends with other writers
waiting, it hands the turn over and waits for the group's commit; the last of the group (nobody waiting, or
`GROUP_LIMIT` writers in it) commits for all, with one fsync, and wakes them.
No writer returns before the commit that holds its work is on disk, so
durability is what it was: what a writer's caller acknowledges is committed.
A failed commit fails every writer of the group (none of their work is kept).

The writers still run one after the other, in the order they got their turn,
each seeing what the earlier ones wrote (the same connection): the schedule
is one SQLite would have run alone. Readers on other connections see a
group's work when it commits, before any of its writers returns.

PostgreSQL needs none of this: its writers lock rows and run side by side,
and the server flushes concurrent commits together itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.orm import Session
from sqlalchemy.orm.session import JoinTransactionMode

from pinfold.controller.database import WRITE

__all__ = ["GROUP_LIMIT", "GroupCommit", "GroupCommitError"]

#: the most writers one commit holds (a bound on the first one's wait)
GROUP_LIMIT = 32


class GroupCommitError(Exception):
    """The commit of a writer's group failed: its work is not stored."""


class GroupCommit:
    """`write()` gives a session whose work is committed, with that of the
    writers around it, before `write()` returns (see the module's docstring).
    `on_failure` is called, under the turn, when a group's commit fails: a
    cache filled from the group's uncommitted work is emptied before the next
    writer can read it."""

    def __init__(
        self, engine: Engine, limit: int = GROUP_LIMIT, on_failure: Callable[[], None] | None = None
    ) -> None:
        self._engine = engine
        self._limit = limit
        self._on_failure = on_failure
        self._turn = threading.Lock()
        self._state = threading.Condition()
        self._queued = 0  # writers waiting for their turn
        self._connection: Connection | None = None
        self._outer: RootTransaction | None = None
        self._members = 0  # writers whose work the open transaction holds
        self._turns = 0  # writers that had a turn in the open group, failed ones too
        self._group = 0  # the number of the open group
        self._failed: dict[int, BaseException] = {}  # groups whose commit failed

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A writer that fails (its body raises) undoes only its own work, and
        its error is raised once its group has ended too: that error may rest
        on earlier writers' work, which the client must not be told of before
        it is stored (a failed group's `GroupCommitError` then wins)."""
        with self._state:
            self._queued += 1
        self._turn.acquire()
        with self._state:
            self._queued -= 1
        group: int | None = None
        try:
            connection = self._open()
            group = self._group
            self._turns += 1
            with (
                Session(
                    bind=connection, join_transaction_mode=self._joining(), expire_on_commit=False
                ) as session,
                session.begin(),
            ):
                yield session
            self._members += 1
        finally:
            self._end_turn()
            self._await(group)

    def _joining(self) -> JoinTransactionMode:
        """How the writer's session joins the open transaction: in a SAVEPOINT
        when it holds other writers' work, which a failure must leave alone;
        else plainly, a failure rolling the whole transaction back (which ends
        the group: `_healthy`). A writer alone (one client: every writer) so
        sends two statements fewer, SAVEPOINT and RELEASE (issue 16)."""
        return "create_savepoint" if self._members else "rollback_only"

    def _open(self) -> Connection:
        """The group's connection, with its transaction begun (the write lock taken)."""
        if self._connection is None or self._outer is None or not self._outer.is_active:
            self._connection = self._engine.connect().execution_options(**{WRITE: True})
            self._outer = self._connection.begin()
            self._members = self._turns = 0
        return self._connection

    def _end_turn(self) -> None:
        """Hand the turn to a waiting writer while the group may grow; else
        commit the group (the caller holds the turn)."""
        try:
            with self._state:
                if self._queued and self._turns < self._limit and self._healthy():
                    return
            self._commit()
        finally:
            self._turn.release()

    def _healthy(self) -> bool:
        """The open transaction still holds the group's work (SQLite ends a
        transaction itself on some errors: then it is committed or failed now).
        Never raises: a connection SQLAlchemy invalidated is not healthy."""
        if self._connection is None or self._outer is None or not self._outer.is_active:
            return False
        try:
            raw = self._connection.connection.dbapi_connection
        except Exception:
            return False
        return bool(getattr(raw, "in_transaction", True))

    def _commit(self) -> None:
        """End the open group, whatever happens: its members are always woken
        (with the error when its work is not stored), or they would wait forever."""
        connection, outer, members = self._connection, self._outer, self._members
        error: BaseException | None = None
        try:
            healthy = self._healthy()
            self._connection, self._outer, self._members, self._turns = None, None, 0, 0
            if outer is not None and members:
                if not healthy:
                    raise GroupCommitError("the database ended the transaction of a group of writes")
                outer.commit()
            elif outer is not None and outer.is_active:  # a first writer that failed rolled it back
                outer.rollback()
        except BaseException as exc:  # every writer of the group is told, whatever it was
            error = exc
        finally:
            self._connection, self._outer, self._members, self._turns = None, None, 0, 0
            if connection is not None:
                try:
                    if error is not None:  # not back to the pool mid-transaction: a new one next time
                        connection.invalidate()
                    connection.close()
                except Exception as exc:
                    error = error or exc
            if error is not None and members and self._on_failure is not None:
                self._on_failure()
            with self._state:
                if error is not None and members:
                    self._failed[self._group] = error
                    self._failed.pop(self._group - 1000, None)
                self._group += 1
                self._state.notify_all()

    def _await(self, group: int | None) -> None:
        """Return once `group` is committed; `GroupCommitError` if its commit failed."""
        if group is None:
            return
        with self._state:
            self._state.wait_for(lambda: self._group > group)
            error = self._failed.get(group)
        if error is not None:
            raise GroupCommitError(f"a group of writes failed to commit: {error}") from error
