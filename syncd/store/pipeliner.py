"""Joins the Redis commands of concurrent callers into shared pipelines, serving them in turns.

Under load, many connections each have a few ops to apply at the same moment. Sent as one pipeline per
caller, each pays redis-py's per-pipeline cost (a pooled connection, a retry wrapper, a timed socket write,
a task for the write's timeout) and a round trip of its own; most of a hub's time then goes there rather
than into the ops. A :class:`Pipeliner` sends whatever callers are waiting as one pipeline, then the callers
that arrived meanwhile as the next one, with up to :data:`IN_FLIGHT` pipelines under way (on as many
connections) so the hub prepares and reads one while Redis runs another: a batch grows with the load, and
an idle hub still sends a lone op at once.

Callers are served in turns, not in arrival order (docs/traps.md §20), the way a fair-queueing router
serves flows (deficit round-robin with sparse flows first, as in fq_codel): a short request (at most
:data:`QUANTUM` commands: a device's op or few) goes whole into the next pipeline of short requests; a
longer one joins the *backlog*, served round-robin a quantum at a time, one quantum per pipeline and one
such pipeline under way at a time. The two never share a pipeline, whose replies come back together. A
connection flooding hundreds of ops (0.1–0.3 ms of Lua each) then holds Redis for a few of them at a time,
and another device's op waits for one turn, not for the flood's backlog. A caller alone takes turns of
:data:`LONE_QUANTUM`, so a device replaying its outbox on a quiet hub keeps most of the batching.

A caller's commands run in order and a caller sees the same replies (or errors) as with a pipeline of its
own: its turns are contiguous within their pipelines, and its next turn is sent only after the previous
one's pipeline has returned, so Redis has run it, whichever connection the next one goes out on. Callers
that must not interleave with themselves (a client's ops) serialise above this layer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from syncd.redis_info import RedisClient

Command = Sequence[Any]
"""One command as ``execute_command`` takes it: name, then arguments."""

IN_FLIGHT: Final = 2
"""Pipelines under way at once. Two keep both the hub and Redis busy; more only split the batches."""
QUANTUM: Final = 4
"""The longest short request, and the backlog's commands per pipeline while other callers have commands
under way: what a newly arrived op waits behind in Redis (4 cart scripts, 0.5–1 ms). 8 left the victim of
an op flood at twice the median wait (``benchmarks isolation``); 4 costs the flood a third of its rate."""
LONE_QUANTUM: Final = 64
"""Commands per pipeline for a caller that is the only one under way (a replay on a quiet hub)."""


def chunk_end(*, total: int, start: int, quantum: int, tail: int) -> int:
    """Where a turn that starts at command ``start`` of ``total`` ends: ``quantum`` commands on, except that
    the last ``tail`` commands never go alone — a WAIT/WAITAOF confirms the writes made before it on *its*
    connection, so it must share a pipeline with the writes it follows."""
    end = min(total, start + quantum)
    return total if total - end <= tail else end


class _Caller:
    """One :meth:`Pipeliner.execute` call: its commands, how many are sent, its replies so far."""

    __slots__ = ("commands", "future", "replies", "sent", "tail")

    def __init__(self, commands: Sequence[Command], tail: int, future: asyncio.Future[list[Any]]) -> None:
        self.commands = commands
        self.tail = tail
        self.future = future
        self.sent = 0
        self.replies: list[Any] = []


class Pipeliner:
    """Runs groups of commands for concurrent callers, several groups per pipeline, in turns."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._fresh: deque[_Caller] = deque()  # short requests, sent whole in the next pipeline
        self._backlog: deque[_Caller] = deque()  # long requests, served a turn at a time, round-robin
        self._backlog_under_way = False  # a pipeline with turns from the backlog has not returned
        self._callers = 0  # execute() calls not answered yet: who shares Redis now
        self._running = 0  # flushers under way, counted synchronously (a done callback would come late)
        self._tasks: set[asyncio.Task[None]] = set()  # held here: the loop keeps only weak references
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop of the last call: asking asyncio for it costs a system call (getpid) each time."""

    async def execute(self, commands: Sequence[Command], *, tail: int = 0) -> list[Any]:
        """The replies to ``commands``, run in order: each a value or the exception its command raised.

        ``tail``: how many last commands must be sent in one pipeline with the command before them (a
        WAIT after writes). Raises what stopped a pipeline (a lost connection: then any of the commands
        may or may not have run; those of later turns were not sent).
        """
        loop = self._loop
        if loop is None or not loop.is_running():  # the one loop every call of a hub comes from
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        caller = _Caller(commands, tail, future)
        # A short request (a device's op or few) goes first; a long one (a flood, a replay) joins the backlog.
        (self._fresh if len(commands) <= QUANTUM else self._backlog).append(caller)
        self._callers += 1
        try:
            self._start_flusher()
            return await future
        finally:
            self._callers -= 1

    def _ready(self) -> bool:
        return bool(self._fresh) or (bool(self._backlog) and not self._backlog_under_way)

    def _start_flusher(self) -> None:
        if self._running < IN_FLIGHT and self._ready():
            self._running += 1
            assert self._loop is not None  # set by execute(), the only caller
            task = self._loop.create_task(self._flush(), name="syncd-pipeliner")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _turns(self) -> tuple[list[tuple[_Caller, int, int]], bool]:
        """The next pipeline's turns, and whether they are the backlog's: every short request, whole, if
        there is any — alone, as a pipeline's replies come back together and a device's op must not wait
        for a flood's turn — else turns from the backlog (in order, round-robin) up to one quantum in all."""
        fresh = [caller for caller in self._fresh if not caller.future.done()]  # cancelled: nothing sent
        self._fresh.clear()
        if fresh:
            turns = [(caller, 0, len(caller.commands)) for caller in fresh]
        else:
            turns = []
            budget = 0 if self._backlog_under_way else LONE_QUANTUM if self._callers == 1 else QUANTUM
            while self._backlog and budget > 0:
                caller = self._backlog.popleft()
                if caller.future.done():  # cancelled between turns: the rest is not sent
                    continue
                start = caller.sent
                end = chunk_end(total=len(caller.commands), start=start, quantum=budget, tail=caller.tail)
                turns.append((caller, start, end))
                budget -= end - start
        for caller, _, end in turns:
            caller.sent = end
        return turns, not fresh

    async def _flush(self) -> None:
        try:
            while self._ready():
                turns, backlog = self._turns()
                if not turns:
                    continue
                self._backlog_under_way |= backlog
                try:
                    pipe: Any = self._client.pipeline(transaction=False)
                    for caller, start, end in turns:
                        for command in caller.commands[start:end]:
                            pipe.execute_command(*command)
                    replies = await pipe.execute(raise_on_error=False)
                except Exception as exc:
                    for caller, _, _ in turns:
                        if not caller.future.done():
                            caller.future.set_exception(exc)
                    continue
                except BaseException:
                    for caller, _, _ in turns:
                        caller.future.cancel()
                    raise
                finally:
                    if backlog:
                        self._backlog_under_way = False
                offset = 0
                for caller, start, end in turns:
                    mine = replies[offset : offset + end - start]
                    offset += end - start
                    if caller.future.done():  # cancelled meanwhile: it no longer wants its replies (or turns)
                        continue
                    caller.replies.extend(mine)
                    if end == len(caller.commands):
                        caller.future.set_result(caller.replies)
                    else:  # its next turn, behind the backlog and after whoever arrived meanwhile
                        self._backlog.append(caller)
                if backlog and self._fresh:  # this flusher serves them; another takes the backlog's next turn
                    self._start_flusher()
        finally:
            self._running -= 1
            if self._running == 0:  # callers still waiting now only if this one was cancelled (hub shutdown):
                waiting = [*self._fresh, *self._backlog]  # nobody would send their commands
                self._fresh.clear()
                self._backlog.clear()
                for caller in waiting:
                    caller.future.cancel()
