"""The syncd client SDK: offline-first carts over a durable SQLite outbox, exactly-once replay to the hub.

Layers (each usable on its own):

* :mod:`clients.engine` — :class:`SyncEngine`, the sans-I/O sync state machine (outbox, window, acks,
  views rebased over the hub's state);
* :mod:`clients.store` — :class:`SQLiteOutbox`, the durable local store;
* :mod:`clients.client` — :class:`SyncClient`, the asyncio client (socket, timers, reconnection);
* :mod:`clients.sync` — :class:`SyncClientSync`, a blocking facade for threaded POS code.
"""

from clients.client import SyncClient
from clients.engine import ChangeCause, SyncEngine
from clients.errors import (
    AuthRequired,
    BackendUnavailable,
    ClientClosed,
    ClientStopped,
    ConnectionClosed,
    OpRejected,
    OutboxStalled,
    ProtocolError,
    SubscriptionRefused,
    SyncError,
    UnexpectedEvent,
)
from clients.handles import OpHandle
from clients.models import (
    CartChange,
    CartConflict,
    CartLine,
    CartState,
    ConnectionState,
    Rejection,
    SoldOut,
    Status,
)
from clients.reconnect import backoff
from clients.store import SQLiteOutbox
from clients.sync import CartSync, OpHandleSync, StockSync, SyncClientSync
from clients.types.cart import Cart
from clients.types.stock import Stock, StockChange, StockState

__all__ = [
    "AuthRequired",
    "BackendUnavailable",
    "Cart",
    "CartChange",
    "CartConflict",
    "CartLine",
    "CartState",
    "CartSync",
    "ChangeCause",
    "ClientClosed",
    "ClientStopped",
    "ConnectionClosed",
    "ConnectionState",
    "OpHandle",
    "OpHandleSync",
    "OpRejected",
    "OutboxStalled",
    "ProtocolError",
    "Rejection",
    "SQLiteOutbox",
    "SoldOut",
    "Status",
    "Stock",
    "StockChange",
    "StockState",
    "StockSync",
    "SubscriptionRefused",
    "SyncClient",
    "SyncClientSync",
    "SyncEngine",
    "SyncError",
    "UnexpectedEvent",
    "backoff",
]
