// The dashboard page: one JSON state a second from /dashboard/feed (syncd/rollup.py), drawn as it comes.
"use strict";

import { LineChart, escape, fmt } from "/dashboard/assets/chart.js";

const $ = (id) => document.getElementById(id);
const charts = {};
let last = null;

function pill(id, ok, text) {
  const el = $(id);
  el.textContent = text;
  el.className = ok === null ? "pill" : ok ? "pill ok" : "pill bad";
}

function rows(tableId, html) {
  document.querySelector(`#${tableId} tbody`).innerHTML = html.join("");
}

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 90 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
}

function alertText(a) {
  if (a.kind === "sync") {
    return `同步延迟告警 Sync latency alert — ${escape(a.channel)}: p99 ${fmt(a.value)} ms > ${a.limit} ms`;
  }
  return `失败率告警 Failure rate alert — ${(a.value * 100).toFixed(2)} % > ${(a.limit * 100).toFixed(2)} %`;
}

function render(s) {
  last = s;
  pill("redis", s.redis_ok, s.redis_ok ? "Redis 正常 · ok" : "Redis 不可达 · unreachable");
  const alertsEl = $("alerts");
  alertsEl.innerHTML = (s.alerts || []).map((a) => `<div data-kind="${a.kind}">⚠ ${alertText(a)}</div>`).join("");
  alertsEl.className = s.alerts && s.alerts.length ? "firing" : "";
  if (!s.redis_ok) return;
  pill("durability", null, `持久性 durability: ${s.durability}`);
  pill("hubs", s.hubs > 0, `Hub 进程 hubs alive: ${s.hubs}`);
  pill("fanout", s.fanout_ok, s.fanout_ok ? "事件流 event stream: ok" : "事件流 event stream: down");
  $("target").textContent = s.target_ms;
  $("alert-ms").textContent = s.alert_sync_p99_ms;

  const p99 = {};
  const latency = Object.entries(s.latency).sort();
  for (const [channel, f] of latency) p99[`${channel} p99`] = f.p99;
  charts.latency.threshold = s.alert_sync_p99_ms;
  charts.latency.push(s.ts, p99);
  rows("latency", latency.map(([channel, f]) => {
    const cell = (v) => `<td class="${v > s.alert_sync_p99_ms ? "over" : ""}">${v === undefined ? "–" : fmt(v)}</td>`;
    return `<tr data-channel="${escape(channel)}"><td>${escape(channel)}</td>${cell(f.p50)}${cell(f.p95)}${cell(f.p99)}
      <td class="samples">${f.samples}</td></tr>`;
  }));
  if (!latency.length) rows("latency", ['<tr><td colspan="5" class="muted">暂无设备上报 · no device reports yet</td></tr>']);

  $("success").textContent = s.success_rate === null ? "–" : `${(s.success_rate * 100).toFixed(2)} %`;
  charts.success.push(s.ts, { "success %": s.success_rate === null ? null : s.success_rate * 100 });
  $("ops").textContent = fmt(s.ops_per_s);
  $("ops").dataset.value = s.ops_per_s;
  charts.ops.push(s.ts, { "ops/s": s.ops_per_s });

  rows("connections", Object.entries(s.connections).sort().map(
    ([channel, n]) => `<tr><td>${escape(channel)}</td><td>${n}</td></tr>`));
  const codes = [["冲突 conflicts", s.conflicts], ["重复 duplicates", s.duplicates],
    ...Object.entries(s.codes).sort().map(([k, v]) => [k.replace("rejected:", "拒绝 rejected ").replace("refused:", "拒收 refused "), v])];
  rows("codes", codes.map(([k, v]) => `<tr><td>${escape(k)}</td><td>${v}</td></tr>`));

  rows("fleet", s.fleet.map((t) => `<tr class="${t.online ? "" : "offline"}" data-terminal="${escape(t.terminal)}">
    <td>${escape(t.store)}</td><td>${escape(t.terminal)}</td><td class="backlog">${t.backlog}</td>
    <td class="oldest">${t.backlog ? ago(t.oldest_ms) : "–"}</td><td>${ago(s.ts - t.seen_ms)} 前 ago</td>
    <td>${t.online ? "在线 online" : "离线 offline"}</td><td>${escape(t.version || "–")}</td></tr>`));
  if (!s.fleet.length) rows("fleet", ['<tr><td colspan="7" class="muted">暂无收银台 · no tills yet</td></tr>']);
  renderStock(s.stock || []);
  const counts = s.stock_counts || {};
  for (const [cls, name] of [["reservations", "reservations"], ["refused", "stock_refused"], ["expired", "expired"]]) {
    document.querySelector(`#stock-counts .${cls}`).textContent = counts[name] === undefined ? "–" : counts[name];
  }
  renderLog();
}

function pairs(map) {
  return Object.entries(map).map(([k, v]) => `${k === "*" ? "无配额渠道 channels without a quota" : escape(k)}: ${v}`).join(", ");
}

function renderStock(watched) {
  rows("stock", watched.map(({ sku, watchers, state: st }) => {
    const cells = st === null
      ? '<td colspan="6" class="muted">尚无库存 · no stock yet</td>'
      : `<td class="on_hand">${st.on_hand}</td><td class="pool">${st.pool}</td><td class="sold">${st.sold}</td>
        <td class="held">${st.held} (${st.holds})</td><td class="atp">${pairs(st.atp)}</td>
        <td class="allot">${pairs(st.allot) || "–"}</td>`;
    return `<tr data-sku="${escape(sku)}"><td>${escape(sku)}</td><td class="watchers">${watchers}</td>${cells}</tr>`;
  }));
  if (!watched.length) rows("stock", ['<tr><td colspan="8" class="muted">暂无关注的 SKU · no SKU watched</td></tr>']);
}

function renderLog() {
  if (!last || !last.log) return;
  const channel = $("filter-channel").value.trim();
  const store = $("filter-store").value.trim();
  const shown = last.log.filter((e) => (!channel || e.channel === channel) && (!store || e.store === store));
  const skip = new Set(["ts", "event", "client", "channel", "store"]);
  rows("log", shown.slice(-100).reverse().map((e) => {
    const details = Object.entries(e).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k}=${v}`).join(" ");
    return `<tr data-event="${escape(e.event)}"><td>${new Date(e.ts).toLocaleTimeString()}</td><td>${escape(e.event)}</td>
      <td>${escape(e.client)}</td><td>${escape(e.channel)}</td><td>${escape(e.store)}</td><td>${escape(details)}</td></tr>`;
  }));
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/dashboard/feed`);
  ws.onopen = () => pill("feed", true, "实时 · live");
  ws.onmessage = (m) => render(JSON.parse(m.data));
  ws.onclose = (e) => {
    pill("feed", false, "已断开 · disconnected");
    if (e.code === 1008) location.reload(); // logged out (token expired or revoked): back to the login
    else setTimeout(connect, 2000);
  };
}

window.addEventListener("DOMContentLoaded", () => {
  charts.latency = new LineChart($("latency-chart"), { threshold: 500, unit: " ms" });
  charts.success = new LineChart($("success-chart"), { unit: " %", max: 100 });
  charts.ops = new LineChart($("ops-chart"));
  $("filter-channel").addEventListener("input", renderLog);
  $("filter-store").addEventListener("input", renderLog);
  connect();
});
