"""RedisStore: ops, snapshots and history of topics, on Redis or Redis Cluster, through one Lua script each.

Key layout
----------
Every key one script touches shares a hash slot, so the same scripts run unchanged on Redis Cluster::

    {m:<member>}:cart               hash   sku -> line (MessagePack: its wire shape, docs/cart-rules.md)
    {m:<member>}:cart:meta          hash   fold -> the cart's fold counter (numbers base dots)
    {m:<member>}:d:<client_id>      hash   dedup of that client's ops on this member (TTL: dedup retention)
                                           max -> highest seq settled here; r:<seq> -> record of a rejection
                                           or conflict; k:<seq % 1024> -> "<seq>|record" of a plain ok
                                           (a ring: see "What a replay is answered" below)
    {m:<member>}:top:cart           hash   epoch, offset of topic cart:<member>; state_bytes -> the encoded
                                           size of the cart's lines together (its size bound); log_bytes ->
                                           bytes of the events appended in this epoch; head_at, head_b -> "at"
                                           and "b" of the stream's first entry as last read (trimming reads
                                           only when due);
                                           fresh -> 1 when the epoch started from an empty cart. Absent for a
                                           cart never written: its snapshot is [EMPTY_EPOCH, 0], no key made
    {m:<member>}:log:cart           stream entry "<offset>-0": "ev" = the encoded ``ev`` frame, "at" = its
                                           commit time, "b" = bytes of the events before it in the epoch;
                                           bounded by count (MAXLEN), age and bytes (``log_max_bytes``)
    {c:<client_id>}:seq             hash   last -> the client's watermark: highest seq settled
    {c:<client_id>}:r:<seq>         string record of an op rejected before any member script (TTL)
    channel ev:cart:<member>        PUBLISH of the same ``ev`` frame bytes, for the hubs' fan-out

MessagePack, not JSON, for stored values: Redis' cjson prints numbers with 14 significant digits, so an HLC
or seq near 2**53 would come back changed; cmsgpack keeps integers exact, is what the wire speaks anyway, and
the scripts assemble maps with explicit headers, so an empty map never turns into an empty array.

One op, step by step
--------------------
``seq`` counts a client's ops across every member, so the client's watermark cannot live in the member's
slot; the member's dedup hash cannot live in the client's. The protocol spans the two slots:

1. ``client_check`` (client slot, read-only): the watermark ``last`` and any pre-script rejection of ``seq``.
   ``seq > last + 1`` is a gap: refused with ``seq_gap``, nothing touched, nothing recorded.
2. The op's script (member slot): dedup, checks, writes, event, PUBLISH, in one atomic step. ``seq <= max``
   of that client in the dedup hash answers the original outcome, marked dup, and changes nothing.
3. ``client_settle`` (client slot): raise ``last`` to ``seq``; it never lowers it.

Why a crash between 2 and 3 is safe: the client never got the ack, so it replays the op with the same
``seq``; ``last`` still says ``seq - 1``, so the op passes step 1, and the member's dedup hash answers with
the original outcome without applying it again (docs/traps.md §8: the dedup record is written in the same
atomic step as the effect); step 3 then advances ``last``. Conversely ``last >= seq`` implies the op was
settled, so an op at or below the watermark is never applied again, even after its dedup hash expired (the
script is told so and answers a plain ok dup).

What a replay is answered (PROTOCOL.md §7.3): within the dedup retention, always whether the op was applied
or rejected, with the rejection's code and message and any conflict (``r:<seq>``, kept as long as the hash);
the ``result`` of a plain success only while the op is among the client's last 1,024 seqs (the ring, which
bounds what one client can make the hub hold per member). Keeping every result for the whole retention would
let one client grow a hash without bound (its op rate times seven days); and nobody needs it: a client waits
for a result only while the op is in its in-flight window (at most ``max_batch`` ≤ 1,024 ops), and an op
replayed from further back is one whose sender restarted and lost the caller that waited for it, when only
applied versus rejected matters. Past the ring a replay is answered ``{ok: true, dup: true}`` without result.

Ops rejected before any script (unknown kind, bad arguments) are settled in the client slot: the rejection is
recorded under ``{c:<client_id>}:r:<seq>`` (with the dedup retention as TTL) and ``last`` advances, so a
replay answers the same. Ops of one client are serialised inside this process, in call order.

Fresh ops (:meth:`RedisStore.apply_ops`): a hub connection knows the watermark it last settled, so ops
right after it skip step 1 and go to Redis in one pipeline. On standalone Redis each script then also does
step 3 itself — it raises ``last`` from ``seq - 1`` to ``seq``, in the same atomic step as its dedup record —
so a run costs one round trip and has no crash window; on a cluster, ``client_settle`` follows the
pipeline. A node holds all scripts or none (:meth:`RedisStore._load_scripts_for`), so no op of a member runs
past one that failed in the same pipeline.

Durability
----------
``script``: the ack follows the script's reply. ``fsync``: every write step is followed, on the same
connection (a pipeline), by ``WAITAOF 1 0 <timeout>``, and the op is reported only once the local AOF holds
it; a timeout or error raises :class:`~protocol.errors.BackendUnavailable` (the op may be applied: the client
retries with the same seq and gets the dup answer). The last step always writes (even a dup refreshes the
dedup TTL and rewrites ``last``), and the AOF is one sequence per node, so the final WAITAOF also covers an
earlier attempt's writes. Refusing to start against a server without WAITAOF is :mod:`syncd.redis_info`'s job.
``replicas``: the same with ``WAIT <wait_replicas> <timeout>`` instead (the replication stream is one sequence
per node too), so an acked op is on a replica that a failover may promote; fewer replicas confirming in time
is an unknown outcome (``BackendUnavailable``), never an ack.

Generations (docs/traps.md §4c): every script that continues a topic's history compares the generation it
was written in with the node's (``_lib.lua`` ``shard_gen``); a failover or a restart starts a new epoch.

Errors: connection failures, timeouts, cluster-down and read-only replicas become ``BackendUnavailable``, and
so does any other failure of the client library (:func:`_unavailable`);
an unknown topic is a :class:`~protocol.errors.ProtocolError` (``unknown_topic``); a seq gap a
``ProtocolError`` with ``seq_gap`` (reported, no close code). A script error (a bug: every expected failure
is a recorded rejection) propagates as redis' ``ResponseError`` and the op's outcome is unknown
(``internal``); as the scripts check everything before their first write, a failed check cannot leave a
partial effect (docs/traps.md §3).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, TypeAlias

import msgspec
import redis.exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from protocol import frames
from protocol.errors import BackendUnavailable, ErrorCode, OpRejected, ProtocolError
from protocol.ops import OpArgs, parse_args
from protocol.topics import parse_topic
from syncd.holds import HoldPolicy
from syncd.settings import DURABILITY_MODES, Durability
from syncd.store.keys import channel, client_slot, member_slot, topic_keys
from syncd.store.pipeliner import Pipeliner
from syncd.store.scripts import Script, load_scripts
from syncd.types import STORE_TYPES, StoreType, for_op, for_topic
from syncd.types.base import EncodableArg, OpEnv, Sweep

RedisClient: TypeAlias = "Redis | RedisCluster"

DEDUP_RETENTION_S: Final = 7 * 24 * 3600
"""Default lifetime of a (client, member) dedup hash after its last write."""
LOG_MAXLEN: Final = 1000
"""Default number of events a topic's stream keeps; older cursors get a reset snapshot."""
LOG_MAX_AGE_S: Final = 7 * 24 * 3600
"""Events older than this are dropped from a topic's history (a resume from before them gets a reset)."""
LOG_MAX_BYTES: Final = 1024 * 1024
"""Encoded bytes of events a topic's history keeps, oldest dropped first: as much as the largest cart
(:data:`protocol.cart.MAX_CART_BYTES`), since beyond it a reset snapshot costs a resuming client less than
the missed events; and what keeps the history from growing with the size of each event times MAXLEN."""
SWEEP_LIMIT: Final = 1000
"""Changes one sweep applies per topic at most (the rest wait for the next sweep)."""
HISTORY_LIMIT: Final = 500
"""Default number of events one :meth:`RedisStore.events_after` call returns."""
FSYNC_TIMEOUT_MS: Final = 2000
"""How long an ack waits for WAITAOF (``fsync``) or WAIT (``replicas``) before the op is reported unavailable
(its outcome unknown: the client retries it with the same seq)."""

_UNAVAILABLE: Final = (
    rexc.ConnectionError,  # includes BusyLoadingError (server replaying its AOF) and MaxConnectionsError
    rexc.TimeoutError,
    rexc.ClusterError,  # includes ClusterDownError, MasterDownError
    rexc.TryAgainError,
    rexc.ReadOnlyError,  # talking to a replica after a failover
    rexc.OutOfMemoryError,
    rexc.RedisClusterException,  # slot not covered, no node reachable
    OSError,
)

log = logging.getLogger("syncd.store")

_MAX_SEQ: Final = 2**53 - 1
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")
"""frames.ClientId, anchored at both ends: the id is part of Redis keys and hash tags."""


# --- outcomes --------------------------------------------------------------------------------------------


class _Record(msgspec.Struct, array_like=True, frozen=True):
    """An op's outcome as the scripts store it for dedup: ``[ok, code, message, result, conflict]``."""

    ok: bool
    code: str | None
    message: str
    result: dict[str, Any] | None
    conflict: dict[str, Any] | None


_record_decoder: Final = msgspec.msgpack.Decoder(_Record)
_event_decoder: Final = msgspec.msgpack.Decoder(frames.Event)
_encoder: Final = msgspec.msgpack.Encoder()


PIPELINE_MAX: Final = 256
"""Member scripts sent in one pipeline (the protocol's default ``max_batch``)."""


@dataclasses.dataclass(slots=True)
class OpOutcome:
    """What applying one op did, as the hub acks it and fans it out.

    ``ok`` false: a rejection (``code``), settled like a success. ``dup``: the op had been settled before and
    this is its original outcome (``result`` is ``None`` only if that outcome is no longer retained).
    ``event`` / ``event_frame``: the event this op appended (decoded, and the exact bytes also published on
    :func:`channel`), only on the op's first application; ``offset`` is its position in the topic.
    """

    seq: int
    ok: bool
    dup: bool = False
    code: str | None = None
    message: str = ""
    result: dict[str, Any] | None = None
    conflict: dict[str, Any] | None = None
    offset: int = 0
    event_frame: bytes | None = None

    @property
    def event(self) -> frames.Event | None:
        """The event decoded, on demand: the hub forwards :attr:`event_frame` and never needs it."""
        return None if self.event_frame is None else _event_decoder.decode(self.event_frame)

    def ack(self) -> frames.Ack:
        """The ``ack`` frame answering the op."""
        return frames.Ack(
            seq=self.seq, ok=self.ok, result=self.result, code=self.code, message=self.message, dup=self.dup
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """What :meth:`RedisStore.apply_ops` settled, in order, and what stopped it, if anything."""

    outcomes: list[OpOutcome]
    error: ProtocolError | BackendUnavailable | None


def _from_record(
    seq: int, raw: bytes, *, dup: bool, offset: int = 0, event_frame: bytes | None = None
) -> OpOutcome:
    rec = _record_decoder.decode(raw)
    return OpOutcome(
        seq=seq,
        ok=rec.ok,
        dup=dup,
        code=rec.code,
        message=rec.message,
        result=rec.result,
        conflict=rec.conflict,
        offset=offset,
        event_frame=event_frame,
    )


# --- op dispatch ---------------------------------------------------------------------------------------


class _OpFields(msgspec.Struct, frozen=True):
    """The op frame's fields beyond ``args`` that reach the scripts, with the frame's own bounds."""

    hlc: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)] = 0
    ctx: frames.VersionVector | None = None


# --- the store -------------------------------------------------------------------------------------------


class RedisStore:
    """Applies ops and serves snapshots and history, on a ``redis.asyncio`` ``Redis`` or ``RedisCluster``.

    The client must be created with ``decode_responses=False`` (values are MessagePack bytes). The store does
    not own it: the caller closes it. Scripts are loaded on first use of each and re-loaded on NOSCRIPT;
    :meth:`load_scripts` loads them all up front.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        durability: Durability = "script",
        dedup_retention_s: int = DEDUP_RETENTION_S,
        log_maxlen: int = LOG_MAXLEN,
        log_max_age_s: int = LOG_MAX_AGE_S,
        log_max_bytes: int = LOG_MAX_BYTES,
        fsync_timeout_ms: int = FSYNC_TIMEOUT_MS,
        wait_replicas: int = 1,
        holds: HoldPolicy | None = None,
    ) -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisStore needs a client with decode_responses=False")
        if durability not in DURABILITY_MODES:
            raise ValueError(f"unknown durability {durability!r}")
        # fsync_timeout_ms 0 would make WAITAOF block forever; a MAXLEN of 0 would keep no history at all.
        for name, value in (
            ("dedup_retention_s", dedup_retention_s),
            ("log_maxlen", log_maxlen),
            ("log_max_age_s", log_max_age_s),
            ("log_max_bytes", log_max_bytes),
            ("fsync_timeout_ms", fsync_timeout_ms),
            ("wait_replicas", wait_replicas),
        ):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self.durability: Durability = durability
        self.dedup_retention_s = dedup_retention_s
        self.log_maxlen = log_maxlen
        self.log_max_age_s = log_max_age_s
        self.log_max_bytes = log_max_bytes
        self.fsync_timeout_ms = fsync_timeout_ms
        self.wait_replicas = wait_replicas
        self._env = OpEnv(holds=holds or HoldPolicy())
        self._waits = durability != "script"
        self._scripts = load_scripts()
        self._locks = _KeyedLocks()
        self._pipeliner = Pipeliner(client)
        self._epochs = _EpochMinter()

    # -- scripts --------------------------------------------------------------------------------------

    async def load_scripts(self) -> None:
        """SCRIPT LOAD every script (on every primary of a cluster)."""
        with _unavailable("loading scripts"):
            for script in self._scripts.values():
                await self._client.script_load(script.source)

    async def _load_scripts_for(self, key: str) -> None:
        """SCRIPT LOAD every script on the node that owns ``key``: after a restart or a flush a node then
        holds all of them or none, never some.

        That matters for pipelines (:meth:`_run_fresh`): were a node to miss one script only, an op using it
        would fail while later ops of the same member, using another script, ran — and the retry of the
        failed op would then be answered from dedup as a duplicate without ever being applied. Loading only
        on the owning node (not on every primary) keeps the scripts of live nodes working while another
        primary of a cluster is down.
        """
        target: dict[str, Any] = {}
        if self._cluster:
            target["target_nodes"] = self._client.get_node_from_key(key)  # type: ignore[union-attr]
        with _unavailable("loading scripts"):
            for script in self._scripts.values():
                await self._client.execute_command("SCRIPT", "LOAD", script.source, **target)

    async def _eval(self, name: str, keys: Sequence[str], argv: Sequence[EncodableArg], *, wait: bool) -> Any:
        """EVALSHA ``name``; with ``wait``, WAITAOF on the same connection before returning.

        NOSCRIPT (a restarted or flushed server) loads every script on the node that owns the keys and
        runs it again: the reply to a NOSCRIPT is an error before any effect, so a retry cannot apply an op
        twice.
        """
        script = self._scripts[name]
        with _unavailable(name):
            try:
                return await self._eval_once(script, keys, argv, wait=wait)
            except rexc.NoScriptError:
                await self._load_scripts_for(keys[0])
                return await self._eval_once(script, keys, argv, wait=wait)

    async def _eval_once(
        self,
        script: Script,
        keys: Sequence[str],
        argv: Sequence[EncodableArg],
        *,
        wait: bool,
        source: bool = False,
    ) -> Any:
        head = ("EVAL", script.source) if source else ("EVALSHA", script.sha)
        command = (*head, len(keys), *keys, *argv)
        if not wait:
            return await self._client.execute_command(*command)
        # WAIT/WAITAOF wait for the writes of *their own connection*: a pipeline keeps both on one connection.
        pipe: Any = self._client.pipeline(transaction=False)
        pipe.execute_command(*command)
        node = None
        if isinstance(self._client, RedisCluster):
            node = self._client.get_node_from_key(keys[0])
            pipe.execute_command(*self._wait_command(), target_nodes=node)
        else:
            pipe.execute_command(*self._wait_command())
        reply, confirmed = await pipe.execute(raise_on_error=False)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(self._client, RedisCluster) and self._client.get_node_from_key(keys[0]) != node:
            # The slot moved during the call (MOVED/ASK): the script ran elsewhere, out of this wait's
            # reach. Unknown durability is unknown outcome: the retry answers from dedup on the new node.
            raise BackendUnavailable(f"{script.name}: slot moved during the write; retry the op")
        self._check_confirmed(confirmed, script.name)
        return reply

    def _wait_command(self) -> tuple[EncodableArg, ...]:
        """What follows a write step on its connection before the ack: WAITAOF (``fsync``) or WAIT
        (``replicas``: the write reached ``wait_replicas`` replicas, so a failover that promotes one of them
        keeps it)."""
        if self.durability == "fsync":
            return ("WAITAOF", 1, 0, self.fsync_timeout_ms)
        return ("WAIT", self.wait_replicas, self.fsync_timeout_ms)

    def _check_confirmed(self, reply: Any, after: str) -> None:
        """Raise :class:`BackendUnavailable` unless ``reply`` (of :meth:`_wait_command`) confirms the write.

        A timeout is an unknown outcome, never an ack: the write may be applied on the primary and lost by
        a failover. The client retries the op with the same seq; the dedup answers it if it survived, and it
        is applied afresh if it did not.
        """
        if isinstance(reply, Exception):
            raise BackendUnavailable(f"{self._wait_command()[0]!s} failed after {after}: {reply}")
        if self.durability == "fsync":
            if int(reply[0]) < 1:
                raise BackendUnavailable(
                    f"{after}: not fsynced to the AOF within {self.fsync_timeout_ms} ms; outcome unknown"
                )
        elif int(reply) < self.wait_replicas:
            raise BackendUnavailable(
                f"{after}: {int(reply)} of {self.wait_replicas} replicas confirmed within "
                f"{self.fsync_timeout_ms} ms; outcome unknown"
            )

    # -- ops ------------------------------------------------------------------------------------------

    async def apply_op(
        self, client_id: str, op: frames.Op, *, check: Callable[[OpArgs], None] | None = None
    ) -> OpOutcome:
        """Apply one op of ``client_id`` exactly once and return its outcome (a rejection is an outcome).

        Raises :class:`ProtocolError` ``seq_gap`` when ``op.seq`` skips numbers (nothing is recorded: the
        client must first send the missing ops), and :class:`BackendUnavailable` when Redis cannot be reached
        or, with ``fsync``, does not confirm the write in time; then the outcome is unknown and the client
        retries the same op (same ``seq``), which is safe.

        ``check`` (the hub's scope check) sees the parsed arguments before any script runs; an
        :class:`OpRejected` it raises is settled like any other rejection, so a replay answers the same.
        """
        batch = await self.apply_ops(client_id, [op], check=check)
        if batch.error is not None:
            raise batch.error
        return batch.outcomes[0]

    async def apply_ops(
        self,
        client_id: str,
        ops: Sequence[frames.Op],
        *,
        check: Callable[[OpArgs], None] | None = None,
        known_last: int | None = None,
    ) -> Batch:
        """Apply a client's ops in order, each exactly once, and settle them.

        Returns the outcomes of the prefix of ``ops`` that was settled, and the error that stopped the rest
        (a ``seq_gap`` :class:`ProtocolError` or :class:`BackendUnavailable`); the client resends from the
        first op without an outcome.

        Fresh ops — consecutive seqs right after the watermark — take the fast path: their member scripts
        go to Redis in one pipeline, in order, and one ``client_settle`` then raises the watermark to the
        last one that succeeded: two round trips for the whole run instead of three per op. ``known_last``
        is the watermark as the caller last saw it settled (a hub connection tracks it); with it, a fresh
        run skips ``client_check``. If it is stale (another connection of the same client settled more),
        the member scripts' dedup still answers every op already applied with its original outcome.
        Replays (``seq <=`` the watermark) and ops rejected before any script take the careful path, one
        at a time (:meth:`_apply`).
        """
        if ops:
            _check_client(client_id)
        for op in ops:
            _check_seq(op.seq)
        outcomes: list[OpOutcome] = []
        await self._locks.acquire(client_id)
        try:
            last = known_last
            i = 0
            try:
                while i < len(ops):
                    if last is None or ops[i].seq != last + 1:
                        outcome = await self._apply(client_id, ops[i], check)
                        outcomes.append(outcome)
                        last = max(last or 0, ops[i].seq)
                        i += 1
                        continue
                    run = self._fresh_run(ops, i, check)
                    if not run:  # rejected before any script: settled by the careful path
                        last = None
                        continue
                    done = await self._run_fresh(client_id, run)
                    outcomes.extend(done)
                    i += len(done)
                    last = ops[i - 1].seq
            except (ProtocolError, BackendUnavailable) as exc:
                return Batch(outcomes, exc)
        finally:
            self._locks.release(client_id)
        return Batch(outcomes, None)

    def _fresh_run(
        self, ops: Sequence[frames.Op], start: int, check: Callable[[OpArgs], None] | None
    ) -> list[tuple[frames.Op, StoreType, OpArgs, _OpFields]]:
        """The longest run of consecutive, valid, permitted ops from ``start`` (at most one pipeline)."""
        if self._cluster and self._waits:
            return []  # each member script needs its own WAIT(AOF) on its node: the careful path does that
        run: list[tuple[frames.Op, StoreType, OpArgs, _OpFields]] = []
        for op in ops[start : start + PIPELINE_MAX]:
            if run and op.seq != run[-1][0].seq + 1:
                break
            try:
                spec, args, fields = _validate(op)
                if check is not None:
                    check(args)
            except OpRejected:
                break
            run.append((op, spec, args, fields))
        return run

    async def _run_fresh(
        self, client_id: str, run: list[tuple[frames.Op, StoreType, OpArgs, _OpFields]]
    ) -> list[OpOutcome]:
        """Pipeline the member scripts of a fresh run, then settle the prefix that succeeded.

        The pipeliner runs a caller's commands in order, so the scripts apply in seq order (in turns that
        share pipelines with other clients' runs: :class:`~syncd.store.pipeliner.Pipeliner`). The watermark is
        raised only past ops whose script replied, never past one that failed: a failed op is retried by
        the client (same seq) and the dedup of any later op that did run answers it as a dup.

        On standalone Redis every key is reachable from one script, so each member script also raises the
        watermark itself, in the same atomic step as its dedup record — one round trip per run, and no
        crash window between effect and watermark. It raises it only from ``seq - 1`` to ``seq``, so it
        never passes an op that failed. On a cluster the watermark lives in another slot: ``client_settle``
        follows the pipeline.
        """
        inline = not self._cluster
        watermark = f"{client_slot(client_id)}:seq"
        commands: list[tuple[EncodableArg, ...]] = []
        for op, spec, args, fields in run:
            script = self._scripts[spec.scripts[op.kind]]
            keys = spec.keys(args, client_id)
            if inline:
                keys.append(watermark)
            argv = self._op_argv(client_id, op, spec, args, fields, settled=False)
            commands.append(("EVALSHA", script.sha, len(keys), *keys, *argv))
        if inline and self._waits:
            commands.append(self._wait_command())
        with _unavailable("applying ops"):
            replies = await self._pipeliner.execute(commands, tail=1 if inline and self._waits else 0)
        if inline and self._waits:
            confirmed, replies = replies[-1], replies[:-1]
            self._check_confirmed(confirmed, "ops")
        outcomes: list[OpOutcome] = []
        failure: Exception | None = None
        for index, ((op, _, args, _), reply) in enumerate(zip(run, replies, strict=True)):
            if isinstance(reply, Exception):
                failure = reply
                later = zip(run[index + 1 :], replies[index + 1 :], strict=True)
                if any(a.member == args.member and not isinstance(r, Exception) for (_, _, a, _), r in later):
                    # Cannot happen while every node holds all scripts or none (_load_scripts_for); if it
                    # does, a later op ran past a failed one: say so loudly, it is an invariant broken.
                    log.error("ops of %s ran past failed op %d (%s): %s", client_id, op.seq, args, failure)
                break
            outcomes.append(_outcome(op.seq, reply))
        if outcomes and not inline:
            last_seq = outcomes[-1].seq
            await self._settle([watermark, f"{client_slot(client_id)}:r:{last_seq}"], last_seq, b"")
        if failure is not None:
            failed_op, spec, args, _ = run[len(outcomes)]
            if isinstance(failure, rexc.NoScriptError):
                # A restarted or flushed node: load every script there; the caller goes on from the failed op.
                await self._load_scripts_for(spec.keys(args, client_id)[0])
                if not outcomes:
                    return [await self._apply(client_id, failed_op, None)]
            elif not outcomes:
                raise _as_unavailable("applying ops", failure)
        return outcomes

    async def _apply(
        self, client_id: str, op: frames.Op, check: Callable[[OpArgs], None] | None
    ) -> OpOutcome:
        seq = op.seq
        slot = client_slot(client_id)
        ckeys = [f"{slot}:seq", f"{slot}:r:{seq}"]
        last_raw, stored = await self._eval("client_check", ckeys, [], wait=False)
        last = int(last_raw)
        if seq > last + 1:
            raise ProtocolError(
                ErrorCode.SEQ_GAP, f"seq {seq} of {client_id} follows {last}: send {last + 1} first"
            )
        settled = seq <= last
        if stored:
            outcome = _from_record(seq, stored, dup=True)
        else:
            try:
                spec, args, fields = _validate(op)
                if check is not None:
                    check(args)
            except OpRejected as exc:
                outcome = OpOutcome(seq=seq, ok=False, dup=settled, code=exc.code, message=exc.message)
                record = (
                    b"" if settled else _encoder.encode(_Record(False, exc.code, exc.message, None, None))
                )
                await self._settle(ckeys, seq, record)
                return outcome
            outcome = await self._run_op(client_id, op, spec, args, fields, settled=settled)
        await self._settle(ckeys, seq, b"")
        return outcome

    def _op_argv(
        self,
        client_id: str,
        op: frames.Op,
        spec: StoreType,
        args: OpArgs,
        fields: _OpFields,
        *,
        settled: bool,
    ) -> list[EncodableArg]:
        topic = spec.topic_name(args)
        return [
            client_id,
            op.seq,
            1 if settled else 0,
            fields.hlc,
            _encoder.encode(fields.ctx) if fields.ctx else _EMPTY_MAP,
            self.dedup_retention_s * 1000,
            self.log_maxlen,
            self._epochs.next(),
            channel(topic),
            topic,
            op.kind,
            self.log_max_age_s * 1000,
            self.log_max_bytes,
            *spec.argv_in(args, self._env),
        ]

    async def _run_op(
        self,
        client_id: str,
        op: frames.Op,
        spec: StoreType,
        args: OpArgs,
        fields: _OpFields,
        *,
        settled: bool,
    ) -> OpOutcome:
        argv = self._op_argv(client_id, op, spec, args, fields, settled=settled)
        # In a cluster the member's and the client's slots may be on different nodes: each needs its wait.
        wait = self._waits and self._cluster
        reply = await self._eval(spec.scripts[op.kind], spec.keys(args, client_id), argv, wait=wait)
        return _outcome(op.seq, reply)

    async def _settle(self, ckeys: list[str], seq: int, record: bytes) -> None:
        ttl_ms = self.dedup_retention_s * 1000
        await self._eval("client_settle", ckeys, [seq, record, ttl_ms], wait=self._waits)

    async def last_seq(self, client_id: str) -> int:
        """The client's watermark: the highest seq settled (``welcome.last_seq``); 0 for a new client."""
        with _unavailable("last_seq"):
            raw = await self._client.execute_command("HGET", f"{client_slot(client_id)}:seq", "last")
        return 0 if raw is None else int(raw)

    # -- topics ---------------------------------------------------------------------------------------

    def node_of(self, topic: str) -> str | None:
        """The ``host:port`` of the cluster node that holds ``topic``, as this hub last knew; ``None`` on a
        single Redis (every topic is on it)."""
        if not isinstance(self._client, RedisCluster):
            return None
        node = self._client.get_node_from_key(topic_keys(parse_topic(topic))[0])
        return None if node is None else str(node.name)

    async def snapshot(self, topic: str) -> tuple[frames.Cursor, dict[str, Any]]:
        """The topic's state and its cursor, read atomically: events after the cursor are exactly the changes
        after the state.

        A topic with no state and no history (never written) is answered ``[EMPTY_EPOCH, 0]`` and an empty
        state, and nothing is written: subscribing to it creates no key. A topic whose state survived the
        loss of its metadata gets a new epoch.
        """
        name = parse_topic(topic)
        stype = for_topic(name.kind)
        if stype is None:
            raise ProtocolError(ErrorCode.UNKNOWN_TOPIC, f"no snapshot for {name.kind} topics yet")
        return await stype.snapshot(self._read_script, name, self._epochs.next())

    async def sweep(self, limit: int = SWEEP_LIMIT) -> int:
        """Apply every type's time-driven changes now due (holds expiring), each exactly once however many
        hubs sweep; how many. Raises :class:`BackendUnavailable` when Redis is."""
        sweep = self.scripting()
        with _unavailable("sweep"):
            return sum([await t.sweep(sweep, limit) for t in STORE_TYPES.values()])

    async def _read_script(self, name: str, keys: Sequence[str], argv: Sequence[EncodableArg]) -> Any:
        return await self._eval(name, keys, argv, wait=False)

    def scripting(self) -> Sweep:
        """What a type's own steps outside an op use (a sweep, a store topic's forward): the client, the
        script runner, fresh epochs and the history bounds of every event append."""
        log_argv = (self.log_maxlen, self.log_max_age_s * 1000, self.log_max_bytes)
        retention_ms = self.dedup_retention_s * 1000
        return Sweep(self._client, self._read_script, self._epochs.next, log_argv, retention_ms)

    async def write(self, name: str, keys: Sequence[str], argv: Sequence[EncodableArg]) -> Any:
        """Run one of the store's scripts as a write step: acknowledged as the durability mode says (the
        mark that must be durable before the op it marks runs, :mod:`syncd.storefeed`)."""
        return await self._eval(name, keys, argv, wait=self._waits)

    async def write_many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[EncodableArg]]]
    ) -> list[Any]:
        """:meth:`write` for several calls of one script, in one pipeline and one wait: a replayed batch with
        many stock sales marks their stores in one round trip, not one each. The wait follows the last
        write on its connection and covers the calls before it (the AOF and the replication stream are one
        sequence per node, and the pipeliner sends a caller's next turn only after the previous returned);
        on a cluster with waits each call needs its node's own, so they go one at a time."""
        return await self._eval_many(name, calls, wait=self._waits)

    async def run_many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[EncodableArg]]]
    ) -> list[Any]:
        """Several calls of one script that need no durability wait (a forward's steps), in one pipeline."""
        return await self._eval_many(name, calls, wait=False)

    async def _eval_many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[EncodableArg]]], *, wait: bool
    ) -> list[Any]:
        if not calls:
            return []
        if self._cluster and wait:
            return [await self._eval(name, keys, argv, wait=True) for keys, argv in calls]
        script = self._scripts[name]
        commands: list[tuple[EncodableArg, ...]] = [
            ("EVALSHA", script.sha, len(keys), *keys, *argv) for keys, argv in calls
        ]
        if wait:
            commands.append(self._wait_command())
        with _unavailable(name):
            replies = await self._pipeliner.execute(commands, tail=1 if wait else 0)
        if wait:
            confirmed, replies = replies[-1], replies[:-1]
            self._check_confirmed(confirmed, name)
        results: list[Any] = []
        for (keys, argv), reply in zip(calls, replies, strict=True):
            if isinstance(reply, rexc.NoScriptError):  # a restarted node forgot them: load, run it again
                reply = await self._eval(name, keys, argv, wait=wait)
            elif isinstance(reply, Exception):
                raise _as_unavailable(name, reply)
            results.append(reply)
        return results

    async def read(self, name: str, keys: Sequence[str], argv: Sequence[EncodableArg]) -> Any:
        """Run one of the store's read-only scripts (a type's own reads, such as the ops API's full state);
        raises :class:`BackendUnavailable` when Redis is."""
        return await self._read_script(name, keys, argv)

    async def claim_request(self, client_id: str, fingerprint: str) -> bool:
        """Tie a one-op client (an HTTP write's, PROTOCOL.md §18.1) to what its op does: ``True`` the first
        time and for the same ``fingerprint`` again (a retry), ``False`` when the client already did
        something else (an idempotency key reused for another request). Kept for the dedup retention."""
        with _unavailable("claim_request"):
            key, ttl_ms = f"{client_slot(client_id)}:fp", self.dedup_retention_s * 1000
            before = await self._client.set(key, fingerprint, nx=True, get=True, px=ttl_ms)
        return before is None or (isinstance(before, bytes | str) and _text(before) == fingerprint)

    async def retire_client(self, client_id: str) -> None:
        """Let a one-op client's watermark expire with its dedup records (after the dedup retention).

        The ops HTTP API gives every write its own client id (PROTOCOL.md §18.1): its watermark would
        otherwise stay forever, one hash per request. Expiring it together with the entity's dedup hash
        keeps the two in step: within the retention a replay is answered, after it both are gone.
        """
        with _unavailable("retire_client"):
            await self._client.execute_command(
                "PEXPIRE", f"{client_slot(client_id)}:seq", self.dedup_retention_s * 1000
            )

    async def load_cart(self, member: str) -> dict[str, Any]:
        """The cart as stored, in :mod:`protocol.cart`'s shape: ``{"lines": {sku: line}, "folds": n}``.

        For tests, the archive and restores; clients get :meth:`snapshot`.
        """
        slot = member_slot(member)
        with _unavailable("load_cart"):
            pipe: Any = self._client.pipeline(transaction=False)
            pipe.execute_command("HGETALL", f"{slot}:cart")
            pipe.execute_command("HGET", f"{slot}:cart:meta", "fold")
            flat, folds = await pipe.execute()
        lines = _pairs(flat) if isinstance(flat, list) else dict(flat)
        return {
            "lines": {_text(sku): msgspec.msgpack.decode(raw) for sku, raw in lines.items()},
            "folds": int(folds or 0),
        }

    async def events_after(
        self, topic: str, cursor: frames.Cursor, *, limit: int = HISTORY_LIMIT
    ) -> list[frames.Event] | None:
        """The topic's events after ``cursor``, oldest first, at most ``limit`` (call again from the last
        one's cursor for more); ``[]`` when the cursor is current.

        ``None`` when the cursor cannot be honoured: the topic is unknown, its epoch differs (history lost),
        the cursor is ahead of the topic, or the first event needed was trimmed (MAXLEN). The caller then
        answers with a snapshot marked ``reset``.

        A cursor ``[EMPTY_EPOCH, 0]`` (the empty state) is honoured while the topic still has no state
        (``[]``), and by a history that started from the empty state: its events from offset 1, which name
        the epoch the caller resumes in. Any other history needs a reset.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        name = parse_topic(topic)
        keys = [*topic_keys(name)]
        stype = for_topic(name.kind)
        if stype is not None:
            keys.append(stype.state_key(name))
        reply = await self._eval("history", keys, [cursor.epoch, cursor.offset, limit], wait=False)
        if not int(reply[0]):
            return None
        return [_event_decoder.decode(body) for body in reply[1:]]


# --- helpers ---------------------------------------------------------------------------------------------


def _outcome(seq: int, reply: Any) -> OpOutcome:
    """An op script's reply ``[record, dup, offset, event]`` as an outcome."""
    raw_rec, dup, offset, body = reply
    return _from_record(
        seq, raw_rec, dup=bool(dup), offset=int(offset), event_frame=bytes(body) if body else None
    )


def _check_client(client_id: str) -> None:
    """``client_id`` and a ``seq`` name an op: without valid ones there is nothing to settle or answer."""
    if not isinstance(client_id, str) or _CLIENT_ID.fullmatch(client_id) is None:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"invalid client_id {str(client_id)[:64]!r}")


def _check_seq(seq: int) -> None:
    if type(seq) is not int or not 1 <= seq <= _MAX_SEQ:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"invalid seq {seq!r}")


def _validate(op: frames.Op) -> tuple[StoreType, OpArgs, _OpFields]:
    """The op's spec, typed args and fields, or :class:`OpRejected` (``unknown_op``/``bad_args``)."""
    args = parse_args(op.kind, op.args)
    spec = for_op(op.kind)
    hlc = op.hlc
    if op.ctx is None and type(hlc) is int and 0 <= hlc <= _MAX_SEQ:  # what the conversion would accept
        return spec, args, _OpFields(hlc)
    try:
        fields = msgspec.convert({"hlc": hlc, "ctx": op.ctx}, type=_OpFields, strict=True)
    except msgspec.ValidationError as exc:
        raise OpRejected(ErrorCode.BAD_ARGS, f"{op.kind}: {exc}") from None
    return spec, args, fields


_EMPTY_MAP: Final = b"\x80"
"""An empty causal context, encoded."""


class _EpochMinter:
    """Epoch candidates: offered to every script that may have to create a topic, used only when it does.

    Random per store and then counted, so an epoch minted after a total loss never equals one a client
    still holds, without asking the OS for randomness on every op.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._count = 0

    def next(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:x}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


class _unavailable:  # noqa: N801 - used as ``with _unavailable(what):``, like the function it was
    """Map Redis being unreachable, loading, down or read-only to :class:`BackendUnavailable`, and so every
    failure of the client library whatever its class.

    Only a script's own error (``ResponseError``: a bug in a script, docs/traps.md §3) passes through. The
    cluster client, during a failover, also raises what no documentation lists (an ``AttributeError`` from a
    connection it closed under a pending command): the op's outcome is just as unknown, and the client's
    retry with the same seq is just as safe, so it must be ``unavailable`` rather than kill the session
    that called.

    A class, not a ``contextlib.contextmanager``: it wraps every batch of ops, and a generator-based
    context manager costs a few microseconds more each time.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or not isinstance(exc, Exception):
            return
        if isinstance(exc, BackendUnavailable | ProtocolError | OpRejected):
            return
        if isinstance(exc, _UNAVAILABLE):
            raise BackendUnavailable(f"redis unavailable ({self.what}): {exc}") from exc
        if isinstance(exc, rexc.ResponseError):
            return
        log.warning("redis client failed (%s): %r", self.what, exc)
        raise BackendUnavailable(f"redis client failed ({self.what}): {exc!r}") from exc


def _as_unavailable(what: str, exc: Exception) -> BackendUnavailable:
    """A failed command inside a pipeline: the op's outcome is unknown, so the client retries it."""
    return BackendUnavailable(f"redis failed ({what}): {exc}")


class _KeyedLocks:
    """One FIFO lock per key, dropped when nobody holds or waits for it.

    Plain acquire/release rather than an async context manager: this is on every op's path.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def acquire(self, key: str) -> None:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._forget(key)
            raise

    def release(self, key: str) -> None:
        self._locks[key][0].release()
        self._forget(key)

    def _forget(self, key: str) -> None:
        lock, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)
