"""The syncd client SDK: offline-first carts over a durable SQLite outbox, exactly-once replay to the hub.

Layers (each usable on its own):

* :mod:`clients.engine` — :class:`SyncEngine`, the sans-I/O sync state machine (outbox, window, acks,
  views rebased over the hub's state);
* :mod:`clients.store` — :class:`SQLiteOutbox`, the durable local store;
* :mod:`clients.client` — :class:`SyncClient`, the asyncio client (socket, timers, reconnection);
* :mod:`clients.sync` — :class:`SyncClientSync`, a blocking facade for threaded POS code.
"""

from clients.client import Cart, OpHandle, SyncClient
from clients.engine import ChangeCause, SyncEngine
from clients.errors import (
    BackendUnavailable,
    ClientClosed,
    ConnectionClosed,
    OpRejected,
    OutboxStalled,
    ProtocolError,
    SubscriptionRefused,
    SyncError,
    UnexpectedEvent,
)
from clients.models import CartChange, CartConflict, CartLine, CartState, ConnectionState, Rejection, Status
from clients.reconnect import backoff
from clients.store import SQLiteOutbox
from clients.sync import CartSync, OpHandleSync, SyncClientSync

__all__ = [
    "BackendUnavailable",
    "Cart",
    "CartChange",
    "CartConflict",
    "CartLine",
    "CartState",
    "CartSync",
    "ChangeCause",
    "ClientClosed",
    "ConnectionClosed",
    "ConnectionState",
    "OpHandle",
    "OpHandleSync",
    "OpRejected",
    "OutboxStalled",
    "ProtocolError",
    "Rejection",
    "SQLiteOutbox",
    "Status",
    "SubscriptionRefused",
    "SyncClient",
    "SyncClientSync",
    "SyncEngine",
    "SyncError",
    "UnexpectedEvent",
    "backoff",
]
