"""Requests that arrive while others of their kind are being done are done
together, as the next batch, by one of their own threads (a leader). No
thread of its own: a request that finds room runs at once, so a lone request
waits for nothing; only under load do requests queue, and then they share one
pass (a create's reservation, agent call and `running` write per host instead
of one each). The pattern of a group commit, one level up.

One wait, short and bounded (`gather_s`): when a batch ends, k requests were
in flight (the batch's and those queued behind it), and the clients it
answered are sending their next ones; a request that could lead the next
batch then, with fewer than k queued, waits for the others (at most
`gather_s` after that batch's end) so that they go as one batch. Without it,
8 clients settled into two batches taking turns (7 and 1: each a whole pass,
a reservation, an agent call and a `running` write), every request waiting
for the other batch's pass before its own (BENCHMARKS.md, issue 16,
fifteenth round). A lone client is never held: it was the only request in
flight. Only requests of the ended batch's key wait (a busy key must not
hold another's), each once; and after a wait that ran out of time the next
batch waits for none: requests that do not come back at once wait at most
every other batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

#: a batch's outcome for each of its items, in order: its result or the error it raised
Outcomes = Sequence[R | BaseException]

#: how long after a batch ends a request waits for the rest of that batch's clients
GATHER_S = 0.020


class _Ticket(Generic[K, T, R]):
    """One request, queued, taken into a batch, then answered."""

    __slots__ = ("answered", "deadline", "error", "identity", "item", "key", "result", "taken")

    def __init__(self, key: K, item: T, identity: Hashable) -> None:
        self.key, self.item, self.identity = key, item, identity
        self.taken = self.answered = False
        #: until when it may wait to gather others, set the first time it could lead (0: not at all)
        self.deadline: float | None = None
        self.result: R | None = None
        self.error: BaseException | None = None


class Coalescer(Generic[K, T, R]):
    """`submit(key, item)` is `run(key, [item])[0]`, except that items of
    one key submitted while `running` batches are under way are run together
    (at most `most` of them, at most one item of each identity: a request sent
    twice at once waits for the next batch, where it finds the first one's
    outcome). `run` gives one outcome per item, in order: a result, or an
    exception, raised in that item's thread; an exception of `run` itself is
    raised in every thread of its batch. A request that would lead a batch
    within `gather_s` of the last batch's end, of that batch's key, with fewer
    of that key queued than were in flight then, waits until they are queued
    or that time is up (the module's docstring says why); once at most."""

    def __init__(
        self,
        run: Callable[[K, list[T]], Outcomes[R]],
        identity: Callable[[T], Hashable],
        most: int = 32,
        running: int = 1,
        gather_s: float = GATHER_S,
    ) -> None:
        if most < 1 or running < 1 or gather_s < 0:
            raise ValueError(
                "a batch holds at least one item, at least one batch runs, and waits are not negative"
            )
        self._run, self._identity, self.most, self.running = run, identity, most, running
        self.gather_s = gather_s
        self._changed = threading.Condition()
        self._queue: list[_Ticket[K, T, R]] = []
        self._under_way = 0
        #: the last batch's key, the requests of that key in flight when it ended (it and
        #: those queued; 0: gather nothing) and when it ended (time.monotonic)
        self._last_key: K | None = None
        self._in_flight, self._last_end = 0, 0.0
        #: the last gathering's time ran out before all came: the next batch's end arms none
        self._missed = False
        self._gathering = 0
        #: batches run, and items run in them (for tests and metrics)
        self.batches = self.items = 0

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        with self._changed:
            return len(self._queue)

    def submit(self, key: K, item: T) -> R:
        ticket: _Ticket[K, T, R] = _Ticket(key, item, self._identity(item))
        with self._changed:
            self._queue.append(ticket)
            if self._gathering:
                self._changed.notify_all()  # one more for the batch being gathered
            while not ticket.taken:
                if self._under_way < self.running:
                    wait = self._gather_wait(ticket)
                    if wait <= 0:
                        batch = self._take(ticket)
                        break
                    self._gathering += 1
                    try:
                        self._changed.wait(wait)
                    finally:
                        self._gathering -= 1
                    continue
                self._changed.wait()
            else:  # another thread took it into its batch: wait for the answer
                while not ticket.answered:
                    self._changed.wait()
                return _answer(ticket)
        self._lead(batch)
        return _answer(ticket)

    def _gather_wait(self, ticket: _Ticket[K, T, R]) -> float:
        """How long `ticket`, which could lead a batch now, waits for the rest
        of the clients the last batch answered first (0: it leads at once).
        Only a request of the last batch's key gathers (others would starve
        behind a busy key), and each at most once, until its deadline."""
        if ticket.deadline is None:
            armed = ticket.key == self._last_key and self._in_flight > 1
            ticket.deadline = self._last_end + self.gather_s if armed else 0.0
        if not ticket.deadline:
            return 0.0
        if self._queued(ticket.key) >= self._in_flight:
            return 0.0
        left = ticket.deadline - time.monotonic()
        if left <= 0:
            self._missed = True
        return left

    def _queued(self, key: K) -> int:
        """How many requests of `key` are queued (holding the lock)."""
        return sum(1 for queued in self._queue if queued.key == key)

    def _take(self, leader: _Ticket[K, T, R]) -> list[_Ticket[K, T, R]]:
        """The leader's batch, in the order they were submitted: itself and
        the oldest queued tickets of its key, one of each identity."""
        chosen, seen, kept = {id(leader)}, {leader.identity}, []
        for ticket in self._queue:
            if ticket is leader:
                continue
            if ticket.key == leader.key and ticket.identity not in seen and len(chosen) < self.most:
                chosen.add(id(ticket))
                seen.add(ticket.identity)
            else:
                kept.append(ticket)
        batch = [ticket for ticket in self._queue if id(ticket) in chosen]
        self._queue = kept
        for ticket in batch:
            ticket.taken = True
        self._under_way += 1
        self.batches += 1
        self.items += len(batch)
        return batch

    def _lead(self, batch: list[_Ticket[K, T, R]]) -> None:
        """Run the batch in this thread, then answer each of its tickets and
        wake the queue (one of its threads leads the next batch)."""
        outcomes: Outcomes[R]
        try:
            outcomes = self._run(batch[0].key, [ticket.item for ticket in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} had {len(outcomes)} outcomes")
        except BaseException as error:  # each of the batch's threads raises it
            outcomes = [error] * len(batch)
        with self._changed:
            for ticket, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    ticket.error = outcome
                else:
                    ticket.result = outcome
                ticket.answered = True
            self._under_way -= 1
            self._arm_gathering(batch[0].key, len(batch))
            self._changed.notify_all()

    def _arm_gathering(self, key: K, size: int) -> None:
        """At the end of a batch of `size` (holding the lock): what the next
        batch of `key` gathers. None after a gathering that ran out of time
        (those clients did not come back, or not at once), so that a stream
        of unrelated requests waits at most every other batch."""
        self._last_key, self._last_end = key, time.monotonic()
        in_flight = size + self._queued(key)
        self._in_flight = 0 if self._missed else min(in_flight, self.most)
        self._missed = False


def _answer(ticket: _Ticket[K, T, R]) -> R:
    if ticket.error is not None:
        raise ticket.error
    return ticket.result  # type: ignore[return-value]
