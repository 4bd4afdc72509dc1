"""Joins the Redis commands of concurrent callers into shared pipelines.

Under load, many connections each have a few ops to apply at the same moment. Sent as one pipeline per
caller, each pays redis-py's per-pipeline cost (a pooled connection, a retry wrapper, a timed socket write,
a task for the write's timeout) and a round trip of its own; most of a hub's time then goes there rather
than into the ops. A :class:`Pipeliner` sends whatever callers are waiting as one pipeline, then the callers
that arrived meanwhile as the next one, with up to :data:`IN_FLIGHT` pipelines under way (on as many
connections) so the hub prepares and reads one while Redis runs another: a batch grows with the load, and
an idle hub still sends a lone op at once.

Each caller's commands stay contiguous and in order, and Redis runs a pipeline in order on one connection,
so a caller sees the same order and the same per-command replies (or errors) as with a pipeline of its own.
Callers that must not interleave with themselves (a client's ops) serialise above this layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from syncd.redis_info import RedisClient

Command = Sequence[Any]
"""One command as ``execute_command`` takes it: name, then arguments."""

IN_FLIGHT: Final = 2
"""Pipelines under way at once. Two keep both the hub and Redis busy; more only split the batches."""


class Pipeliner:
    """Runs groups of commands for concurrent callers, several groups per pipeline."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._waiting: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._running = 0  # flushers under way, counted synchronously (a done callback would come late)
        self._tasks: set[asyncio.Task[None]] = set()  # held here: the loop keeps only weak references

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies to ``commands``, run in order: each a value or the exception its command raised.

        Raises what stopped the whole pipeline (a lost connection: then any of the commands may or may not
        have run).
        """
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((commands, future))
        if self._running < IN_FLIGHT:
            self._running += 1
            task = asyncio.create_task(self._flush(), name="syncd-pipeliner")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                groups, self._waiting = self._waiting, []
                pipe: Any = self._client.pipeline(transaction=False)
                for commands, _ in groups:
                    for command in commands:
                        pipe.execute_command(*command)
                try:
                    replies = await pipe.execute(raise_on_error=False)
                except Exception as exc:
                    for _, future in groups:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _, future in groups:
                        future.cancel()
                    raise
                start = 0
                for commands, future in groups:
                    end = start + len(commands)
                    if not future.done():  # a caller cancelled meanwhile no longer wants its replies
                        future.set_result(replies[start:end])
                    start = end
        finally:
            self._running -= 1
            if self._running == 0:  # callers still waiting now only if this one was cancelled (hub shutdown):
                waiting, self._waiting = self._waiting, []  # nobody would send their commands
                for _, future in waiting:
                    future.cancel()
