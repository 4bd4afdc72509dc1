"""The ops dashboard in a real headless Chromium (Debian's, driven by Playwright; `make test` installs both).

One hub process, real devices: a writer making ops, an SDK client on the ``pos`` channel watching the cart
through a proxy that can delay its traffic, a till that goes offline with unsynced ops. The page must load
only with an ops token, move while the load runs, raise the latency alert within 10 s of a delay and clear
it on recovery, show the offline till's backlog ageing then drained, and never show a phone number or a token.
An SDK till behind a network that is cut twice shows its backlog grown offline, then drained by the replay;
the stock panel shows a watched SKU's buckets, ATP and holds after a reservation. Screenshots are kept under
``test-artifacts/``: the alert raised (``dashboard-alert.png``), the offline till in the fleet
(``dashboard.png``, ``dashboard-fleet-offline.png``) and the stock panel (``dashboard-stock.png``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from clients import OpRejected, SyncClient
from protocol import frames
from tests.e2e.harness import HubProcess, WireClient, token

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
PHONE = "13912345678"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


class DelayProxy:
    """A loopback TCP proxy that delivers every chunk ``delay`` seconds after it arrived, in order, both ways
    (a slow network, not a slow pipe: chunks in flight overlap)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.refusing = False
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def cut(self) -> None:
        """The network goes away: open connections drop, new ones are closed at once until :meth:`restore`."""
        self.refusing = True
        for writer in list(self._writers):
            writer.close()

    def restore(self) -> None:
        self.refusing = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.update((writer, up_writer))
        for task in (self._pump(reader, up_writer), self._pump(up_reader, writer)):
            t = asyncio.create_task(task)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((time.monotonic() + self.delay, data))
            queue.put_nowait((time.monotonic() + self.delay, b""))
            await sender
        finally:
            sender.cancel()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)"
        )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        await browser.close()


async def write_load(url: str, stop: asyncio.Event) -> None:
    """A customer's app adding to a cart about 30 times a second until ``stop``."""
    client_id = f"app-{PHONE}"
    writer = await WireClient.open(url, client_id, tok=token(client_id, channel="miniapp"))
    n = 0
    while not stop.is_set():
        n += 1
        await writer.op(
            "cart.add", {"member": "m-load", "sku": f"SKU-{n % 7}", "qty": 1}, ts=int(time.time() * 1000)
        )
        await asyncio.sleep(0.03)


async def report(till: WireClient, stats: dict[str, float]) -> None:
    """A till's pings with its figures, every half second (its heartbeat is 1 s), until cancelled."""
    while True:
        await till.send(frames.Ping(ts=int(time.time() * 1000), stats=stats))
        await asyncio.sleep(0.5)


def till_client(url: str, client_id: str, store: str, tmp_path: Path, **options: Any) -> SyncClient:
    """An SDK till of ``store``, its data under ``tmp_path``."""
    return SyncClient(
        url,
        token=token(client_id, role="pos", store=store),
        data_dir=tmp_path / client_id,
        client_id=client_id,
        **options,
    )


async def text_of(page: Any, selector: str) -> str:
    return str(await page.locator(selector).first.inner_text())


async def test_the_dashboard_shows_load_alerts_and_the_pos_fleet_to_ops_only(
    redis_server: Any, hub_factory: Any, browser: Any, tmp_path: Path
) -> None:
    hub: HubProcess = hub_factory(redis_server.url, SYNCD_HEARTBEAT_MS="1000", SYNCD_ALERT_WINDOW_S="10")
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})

    # Refused without a token, and with a token that is not an ops one; admitted with an ops token.
    response = await page.goto(hub.http + "/dashboard")
    assert response.status == 401
    await page.fill("#token", token("app-1"))
    await page.click("button[type=submit]")
    assert "Not a valid ops token" in await text_of(page, "#message")
    ops_token = token("ops-1", role="ops")
    await page.fill("#token", ops_token)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#feed.ok", timeout=10_000)
    cookie = next(c for c in await page.context.cookies() if c["name"] == "syncd_ops")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    stop = asyncio.Event()
    load = asyncio.create_task(write_load(hub.url, stop))
    till = await WireClient.open(hub.url, "till-9", hello=False)
    hello = frames.Hello(
        versions=[1], token=token("till-9", role="pos", store="s7"), client_id="till-9", agent="pos/2.4.1"
    )
    await till.send(hello)
    await till.recv_type(frames.Welcome)
    till_stats = {"outbox": 0.0, "outbox_age_ms": 0.0}
    reporting = asyncio.create_task(report(till, till_stats))
    async with DelayProxy(hub.port) as proxy:
        observer = till_client(proxy.url, "till-obs", "s1", tmp_path)
        async with observer:
            observer.cart("m-load")
            await observer.wait_synced(20)

            # The charts move while the load runs.
            await page.wait_for_function(
                "Number(document.getElementById('ops').dataset.value) > 5", timeout=10_000
            )
            before = await page.locator("#ops-chart polyline").get_attribute("points")
            await asyncio.sleep(1.5)
            assert await page.locator("#ops-chart polyline").get_attribute("points") != before
            await page.wait_for_selector("#latency tr[data-channel=pos]", timeout=10_000)
            assert await page.locator("#alerts.firing").count() == 0
            # The health strip, success rate, connections by channel and rejections by code.
            assert "Redis 正常 · ok" in await text_of(page, "#redis")
            assert "hubs alive: 1" in await text_of(page, "#hubs")
            assert "event stream: ok" in await text_of(page, "#fanout")
            assert (await text_of(page, "#durability")).startswith("持久性 durability: auto")  # the setting
            assert (await text_of(page, "#success")).endswith("%")
            channels = await page.locator("#connections tbody tr td:first-child").all_inner_texts()
            assert {"miniapp", "pos"} <= set(channels)
            await till.op("cart.add", {"member": "m-load", "sku": "SKU-1", "qty": "2"})  # a typed rejection
            assert (await till.recv_type(frames.Ack)).code == "bad_args"
            await page.wait_for_selector("#codes td:text-is('拒绝 rejected bad_args')", timeout=10_000)

            # 700 ms more on the pos channel's network: its p99 alert within 10 s; back to normal: cleared.
            proxy.delay = 0.7
            await page.wait_for_selector("#alerts.firing [data-kind=sync]", timeout=10_000)
            assert "pos" in await text_of(page, "#alerts")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-alert.png"), full_page=True)
            proxy.delay = 0.0
            # cleared once the slow samples have left the 10 s window the percentiles are taken over
            await page.wait_for_selector("#alerts:not(.firing)", state="attached", timeout=30_000)

            # A till goes offline with five unsynced ops: its row ages; back online and drained: backlog 0.
            row = "#fleet tr[data-terminal=till-9]"
            till_stats.update(outbox=5.0, outbox_age_ms=3000.0)
            await page.wait_for_selector(f"{row} .backlog:text-is('5')", timeout=10_000)
            reporting.cancel()
            await till.close()
            await page.wait_for_selector(f"{row}.offline", timeout=10_000)
            assert (await page.locator("#fleet tbody tr").first.get_attribute("data-terminal")) == "till-9"
            assert await text_of(page, f"{row} .backlog") == "5"
            first_age = await text_of(page, f"{row} .oldest")
            await page.wait_for_function(
                f"document.querySelector('{row} .oldest').innerText !== {first_age!r}", timeout=10_000
            )
            page_text = await page.content()
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            back = await WireClient.open(hub.url, "till-9", tok=token("till-9", role="pos", store="s7"))
            reporting = asyncio.create_task(report(back, {"outbox": 0.0, "outbox_age_ms": 0.0}))
            await page.wait_for_selector(f"{row}:not(.offline) .backlog:text-is('0')", timeout=10_000)
    stop.set()
    reporting.cancel()
    with contextlib.suppress(Exception):
        await load

    # The sync log is filterable, and no phone number or token is anywhere on the page.
    await page.fill("#filter-store", "s7")
    stores = await page.locator("#log tbody tr td:nth-child(5)").all_inner_texts()
    assert stores and set(stores) == {"s7"}
    await page.fill("#filter-store", "")
    await page.fill("#filter-channel", "pos")
    channels = await page.locator("#log tbody tr td:nth-child(4)").all_inner_texts()
    assert channels and set(channels) == {"pos"}
    for label in ("同步延迟 · Sync latency", "收银台 · terminal", "积压 · backlog", "门店 · store"):
        assert label in page_text  # labels in both languages
    assert "app-139****5678" in page_text
    for secret in (PHONE, ops_token, ops_token.split(".")[2]):
        assert secret not in page_text
        assert secret not in await page.content()

    # Without the cookie the feed refuses the handshake.
    refused = await browser.new_page()
    await refused.goto(hub.http + "/dashboard")
    assert await refused.locator("#login").count() == 1


async def open_dashboard(browser: Any, hub: HubProcess) -> Any:
    """A page logged in with an ops token, its feed live."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    await page.goto(hub.http + "/dashboard")
    await page.fill("#token", token("ops-1", role="ops"))
    await page.click("button[type=submit]")
    await page.wait_for_selector("#feed.ok", timeout=10_000)
    return page


RECORD_ROW = """row => { window.seen = []; setInterval(() => {
  const r = document.querySelector(row);
  if (r) window.seen.push([r.classList.contains('offline'), Number(r.querySelector('.backlog').innerText)]);
}, 50); }"""

ONLINE_WITH_BACKLOG = """row => { const r = document.querySelector(row);
  return r && !r.classList.contains('offline') && Number(r.querySelector('.backlog').innerText) > 0; }"""


def fast() -> Any:
    while True:
        yield 0.2


async def test_the_pos_fleet_shows_an_offline_tills_backlog_growing_then_draining_after_reconnect(
    redis_server: Any, hub_factory: Any, browser: Any, tmp_path: Path
) -> None:
    """A real SDK till behind a network that is cut twice. Offline, the hub shows its last known backlog;
    the till's first report on reconnecting, made before it replays, shows the backlog grown offline; the
    replay (one op a second: the hub's rate limit) drains it to 0 in the reports that follow."""
    hub: HubProcess = hub_factory(
        redis_server.url, SYNCD_HEARTBEAT_MS="1000", SYNCD_OP_RATE="1", SYNCD_OP_BURST="1"
    )
    page = await open_dashboard(browser, hub)
    row = "#fleet tr[data-terminal=till-5]"
    async with DelayProxy(hub.port) as proxy:
        till = till_client(
            proxy.url, "till-5", "s5", tmp_path, agent="pos/3.1.0", report_interval_ms=200, backoff=fast
        )
        async with till:
            cart = till.cart("m-till")
            await (await cart.add("A", 1)).acked()
            await page.wait_for_selector(f"{row}:not(.offline) .backlog:text-is('0')", timeout=10_000)
            assert "pos/3.1.0" in await text_of(page, row)
            await page.evaluate(RECORD_ROW, row)

            proxy.cut()  # offline: eight sales queue up, the hub cannot know
            await page.wait_for_selector(f"{row}.offline", timeout=10_000)
            for n in range(8):
                await cart.add(f"B{n}", 1)
            proxy.restore()  # back: the first report shows them all, then the replay drains them slowly
            await page.wait_for_function(ONLINE_WITH_BACKLOG, arg=row, timeout=10_000)
            proxy.cut()  # offline again mid-replay: the row keeps the last backlog it heard, ageing
            await page.wait_for_selector(f"{row}.offline", timeout=10_000)
            for n in range(3):
                await cart.add(f"C{n}", 1)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-fleet-offline.png"), full_page=True)
            proxy.restore()
            await till.wait_synced(60)
            await page.wait_for_selector(f"{row}:not(.offline) .backlog:text-is('0')", timeout=15_000)
            assert till.status.pending_ops == 0

    seen: list[tuple[bool, int]] = [tuple(x) for x in await page.evaluate("window.seen")]
    states = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]  # the changes, in order
    offline_with_backlog = [n for offline, n in states if offline and n > 0]
    assert offline_with_backlog, states  # the second outage: the last backlog heard, kept on view
    grown = states.index((True, offline_with_backlog[-1]))
    after = [n for offline, n in states[grown:] if not offline]
    assert after and after[0] > offline_with_backlog[-1], states  # the first report back: grown offline
    assert after[-1] == 0 and after == sorted(after, reverse=True), states  # then only draining


async def test_the_stock_panel_shows_a_watched_skus_buckets_atp_and_holds_after_a_reservation(
    hub: HubProcess, browser: Any, tmp_path: Path
) -> None:
    admin = await WireClient.open(hub.url, "ops-2", tok=token("ops-2", role="ops"))
    for kind, args in (
        ("stock.restock", {"qty": 10}),
        ("stock.quota", {"channel": "web", "qty": 6}),
        ("stock.allot", {"store": "s1", "qty": 2}),
    ):
        await admin.op(kind, {"member": "ops", "sku": "SKU-7", **args})
        assert (await admin.recv_type(frames.Ack)).ok
    page = await open_dashboard(browser, hub)
    row = "#stock tr[data-sku=SKU-7]"
    shopper = SyncClient(
        hub.url, token=token("web-1", channel="web"), data_dir=tmp_path / "web", client_id="web-1"
    )
    async with shopper:
        stock = shopper.stock("SKU-7")
        await shopper.wait_synced(20)
        await page.wait_for_selector(f"{row} .pool:text-is('8')", timeout=10_000)
        assert await text_of(page, f"{row} .held") == "0 (0)"
        assert await (await stock.reserve("m1", 3, channel="web", ttl_ms=600_000)).acked()
        await page.wait_for_selector(f"{row} .pool:text-is('5')", timeout=10_000)
        assert await text_of(page, f"{row} .watchers") == "1"
        assert await text_of(page, f"{row} .on_hand") == "10"
        assert await text_of(page, f"{row} .sold") == "0"
        assert await text_of(page, f"{row} .held") == "3 (1)"
        assert "web: 3" in await text_of(page, f"{row} .atp")  # min(pool 5, quota 6 - 3 taken)
        assert await text_of(page, f"{row} .allot") == "s1: 2"
        with pytest.raises(OpRejected, match="insufficient_stock"):
            await (await stock.reserve("m2", 50, channel="web", ttl_ms=600_000)).acked()
        await page.wait_for_selector("#stock-counts .refused:text-is('1')", timeout=10_000)
        assert await text_of(page, "#stock-counts .reservations") == "1"
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-stock.png"), full_page=True)
