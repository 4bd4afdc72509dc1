"""Caps on connections, counted where they cost: per address before ``hello``, per client after it.

A connection that has not said ``hello`` is unauthenticated: anyone can open thousands, each holding a socket,
a protocol object and a task until the handshake deadline. Counting them per remote address bounds what one
host can hold (stores behind one NAT share an address, hence a generous default). After ``hello`` the
client_id is known and authenticated: a device needs one connection (two while a reconnect overlaps the old
one), so a cap per client_id stops a leaked token from being multiplied. Both refusals close with 4000
``try_again_later``: the peer may come back once its other connections are gone.
"""

from __future__ import annotations

from collections import Counter


class Admission:
    """The counts, for one hub process; the endpoint enters and leaves them."""

    def __init__(self, max_pending_per_address: int, max_connections_per_client: int) -> None:
        self.max_pending_per_address = max_pending_per_address
        self.max_connections_per_client = max_connections_per_client
        self._pending: Counter[str] = Counter()
        self._clients: Counter[str] = Counter()

    def enter_pending(self, address: str) -> bool:
        """Count a new connection from ``address``; ``False`` (and not counted) when it is over the cap."""
        if self._pending[address] >= self.max_pending_per_address:
            return False
        self._pending[address] += 1
        return True

    def leave_pending(self, address: str) -> None:
        self._pending[address] -= 1
        if self._pending[address] <= 0:
            del self._pending[address]

    def open_client(self, client_id: str) -> bool:
        """Count a session of ``client_id``; ``False`` (and not counted) when it has its cap already."""
        if self._clients[client_id] >= self.max_connections_per_client:
            return False
        self._clients[client_id] += 1
        return True

    def close_client(self, client_id: str) -> None:
        self._clients[client_id] -= 1
        if self._clients[client_id] <= 0:
            del self._clients[client_id]
