"""Which SKUs' stock the client follows for its open carts: sold-out reaching open carts (PROTOCOL.md §18.6).

A cart holding a SKU hears when it sells out: the SDK subscribes ``stock:<sku>`` for the SKUs on the lines of
every cart handle, and lets go once no cart line needs one. The hub does nothing special: it would otherwise
need an index from SKU to the carts holding it, across hash slots, updated on every cart op
(docs/design.md §3). Bounded: at most ``limit`` SKUs are followed for carts at once (a connection holds a
bounded number of subscriptions); lines beyond it are not followed, the lowest SKUs first being kept.

This module is bookkeeping only: the client subscribes and unsubscribes as it says. A SKU the application
asked for itself (``client.stock(sku)``) is *claimed*: it stays subscribed, and stored across restarts, when
no cart needs it any more; a SKU followed for carts only is neither stored nor kept after its last line goes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

DEFAULT_FOLLOW_STOCK: Final = 0
"""SKUs followed for carts at once, by default: none (opt in with ``SyncClient(follow_stock=n)``). Each is a
subscription on the device's connection (the hub's default allows 100) and a stream of stock events, which a
cart-only till does not want unasked; 32 suits a shopper's app."""


class StockFollows:
    """SKU ↔ carts following it, and the SKUs the application claimed for itself."""

    def __init__(self, limit: int = DEFAULT_FOLLOW_STOCK) -> None:
        if limit < 0:
            raise ValueError("follow_stock must be 0 (off) or more")
        self.limit = limit
        self._by_cart: dict[str, set[str]] = {}
        self._carts: dict[str, set[str]] = {}
        self._claimed: set[str] = set()
        self._refused: set[str] = set()  # the hub refused to serve these (too many subscriptions): not again

    def update(self, cart: str, skus: Iterable[str]) -> tuple[list[str], list[str]]:
        """``cart`` now has lines for ``skus``: ``(skus to subscribe, skus to unsubscribe)``. Lines already
        followed stay followed; new ones are taken in SKU order while fewer than ``limit`` are followed."""
        on_lines = set(skus)
        current = self._by_cart.setdefault(cart, set())
        dropped: list[str] = []
        for sku in sorted(current - on_lines):
            current.discard(sku)
            carts = self._carts[sku]
            carts.discard(cart)
            if not carts:
                del self._carts[sku]
                if sku not in self._claimed:
                    dropped.append(sku)
        added: list[str] = []
        for sku in sorted(on_lines - current - self._refused):
            if sku not in self._carts and len(self._carts) >= self.limit:
                continue  # at the bound: only SKUs other carts already follow
            if sku not in self._carts and sku not in self._claimed:
                added.append(sku)
            current.add(sku)
            self._carts.setdefault(sku, set()).add(cart)
        if not current:
            del self._by_cart[cart]
        return added, dropped

    def forget(self, cart: str) -> list[str]:
        """The cart was unsubscribed: the SKUs to unsubscribe."""
        return self.update(cart, ())[1]

    def refuse(self, sku: str) -> None:
        """The hub would not serve ``sku``'s stock to this connection: stop following it for carts, for the
        rest of this client's life (a cart does without; the application's own ``client.stock`` says why)."""
        self._refused.add(sku)
        for cart in self._carts.pop(sku, ()):
            self._by_cart[cart].discard(sku)

    def skus_of(self, cart: str) -> frozenset[str]:
        return frozenset(self._by_cart.get(cart, ()))

    def carts_of(self, sku: str) -> frozenset[str]:
        return frozenset(self._carts.get(sku, ()))

    def claim(self, sku: str) -> None:
        """The application asked for this SKU's stock itself."""
        self._claimed.add(sku)

    def release(self, sku: str) -> bool:
        """The application let go of this SKU; whether carts still follow it (then keep it subscribed)."""
        self._claimed.discard(sku)
        return sku in self._carts

    def transient(self, sku: str) -> bool:
        """Followed for carts only: not stored across restarts."""
        return sku in self._carts and sku not in self._claimed
