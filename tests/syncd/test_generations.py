"""The generation watcher notices a primary with a new replication id (a restart, a promoted replica), and a
session resynchronises the subscriptions it is told to (syncd/generations.py, docs/traps.md §4c)."""

from __future__ import annotations

from redis.asyncio import Redis

from syncd.embedded import EmbeddedRedis
from syncd.generations import STANDALONE, GenerationWatcher
from tests.syncd.test_session import TOPIC, Gaps, live, new_session


async def next_change(watcher: GenerationWatcher) -> set[str]:
    """Look until a change is seen: the first look after a restart may find the old connection broken."""
    for _ in range(5):
        if changed := await watcher.look():
            return changed
    return set()


async def test_a_restarted_primary_is_a_new_generation(redis_server: EmbeddedRedis) -> None:
    reported: list[set[str]] = []
    client = Redis.from_url(redis_server.url)
    try:
        watcher = GenerationWatcher(client, reported.append)
        assert await watcher.look() == set()  # the first look only learns
        assert await watcher.look() == set()
        redis_server.restart()
        assert await next_change(watcher) == {STANDALONE}
        assert await watcher.look() == set()
    finally:
        await client.aclose()
    assert reported == [{STANDALONE}]


async def test_a_node_that_does_not_answer_keeps_its_generation(redis_server: EmbeddedRedis) -> None:
    reported: list[set[str]] = []
    client = Redis.from_url(redis_server.url, socket_connect_timeout=1)
    try:
        watcher = GenerationWatcher(client, reported.append)
        await watcher.look()
        redis_server.kill()
        assert await watcher.look() == set()
        redis_server.restart()
        assert await next_change(watcher) == {STANDALONE}
    finally:
        await client.aclose()


def test_resynchronise_checks_a_live_subscription_once() -> None:
    gaps = Gaps()
    session = new_session(gaps)
    sub = live(session)
    session.resynchronise(sub)
    session.resynchronise(sub)  # already synchronising: left to finish
    assert gaps.subs == [sub] and session.subscriptions[TOPIC].buffer == []
