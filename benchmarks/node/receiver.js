// Fan-out receivers for `python -m benchmarks fanout`: many websocket subscribers in one Node process
// (packages: ws, @msgpack/msgpack; installed by benchmarks/nodeclient.py with `npm ci`).
//
// Usage: node receiver.js CONFIG.json — the config (written by benchmarks/nodeclient.py) names the protocol
// ("syncd", "floor" or "peer"), the URL and, per connection, the frames to send to subscribe (base64 for the
// binary protocols, text for Socket.IO). Prints one line "ready <n>" once every connection is subscribed, then
// records (origin seq, receive time) of every event. On stdin it then reads one JSON document, {"base": "<ns>",
// "sends": [send time of seq 1, 2, ... in ns], "steps": [[first seq, last seq], ...]}, and prints its results
// as one JSON line: per step the deliveries and a latency histogram (same buckets as benchmarks/stats.py).
//
// Times: process.hrtime.bigint() is CLOCK_MONOTONIC, the clock Python's time.monotonic_ns() reads.
"use strict";

const fs = require("fs");
const WebSocket = require("ws");
const { decode: unpack } = require("@msgpack/msgpack");

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const LOG_GROWTH = Math.log(1.01);
const t0 = process.hrtime.bigint();

let seqs = new Int32Array(1 << 20);
let times = new Float64Array(1 << 20);
let count = 0;
const closed = {};
let ready = 0;
let failed = 0;

function record(seq) {
  const now = Number(process.hrtime.bigint() - t0);
  if (count === seqs.length) {
    const s = new Int32Array(seqs.length * 2);
    s.set(seqs);
    seqs = s;
    const t = new Float64Array(times.length * 2);
    t.set(times);
    times = t;
  }
  seqs[count] = seq;
  times[count] = now;
  count += 1;
}

function decode(data) {
  return unpack(data);
}

function open(conn) {
  return new Promise((resolve) => {
    const ws = new WebSocket(config.url, { perMessageDeflate: false, maxPayload: 1 << 22 });
    let state = "opening";
    const done = (ok) => {
      if (state === "opening" || state === "subscribing") {
        state = ok ? "live" : "failed";
        if (ok) ready += 1;
        else failed += 1;
        resolve(ws);
      }
    };
    ws.on("open", () => {
      if (config.protocol === "syncd") {
        ws.send(Buffer.from(conn.hello, "base64"));
      } else if (config.protocol === "floor") {
        state = "subscribing";
        ws.send(Buffer.from(conn.sub, "base64"));
      }
    });
    ws.on("message", (data, isBinary) => {
      if (config.protocol === "peer") {
        const text = data.toString();
        if (text === "2") {
          ws.send("3");
        } else if (text.startsWith('42["ev"')) {
          record(JSON.parse(text.slice(2))[1].origin[1]);
        } else if (state === "opening" && text.startsWith("0")) {
          ws.send("40");
        } else if (state === "opening" && text.startsWith("40")) {
          state = "subscribing";
          ws.send(conn.sub);
        } else if (state === "subscribing" && text.startsWith("43")) {
          done(true);
        }
        return;
      }
      const frame = decode(data);
      if (frame.t === "ev") {
        record(frame.origin[1]);
      } else if (frame.t === "welcome") {
        state = "subscribing";
        ws.send(Buffer.from(conn.sub, "base64"));
      } else if (frame.t === "snap") {
        done(true);
      } else if (frame.t === "err") {
        done(false);
      }
    });
    ws.on("close", (code) => {
      closed[code] = (closed[code] || 0) + 1;
      done(false);
    });
    ws.on("error", () => {});
    if (config.ping) {
      const ping = Buffer.from(config.ping, "base64");
      setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(ping);
      }, config.ping_interval_ms).unref();
    }
  });
}

async function main() {
  const sockets = [];
  const pending = config.conns.slice();
  const workers = [];
  for (let i = 0; i < (config.concurrency || 50); i++) {
    workers.push(
      (async () => {
        while (pending.length) {
          sockets.push(await open(pending.shift()));
        }
      })(),
    );
  }
  await Promise.all(workers);
  process.stdout.write(`ready ${ready} ${failed}\n`);

  let input = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => (input += chunk));
  process.stdin.on("end", () => {
    const plan = JSON.parse(input);
    const base = BigInt(plan.base);
    const offset = Number(t0 - base); // our times are since t0; send times are since base
    const sends = plan.sends;
    const steps = plan.steps.map(([first, last]) => ({ first, last, delivered: 0, hist: {} }));
    const stepOf = new Int32Array(sends.length + 1).fill(-1);
    steps.forEach((s, index) => {
      for (let seq = s.first; seq <= s.last && seq <= sends.length; seq++) stepOf[seq] = index;
    });
    for (let i = 0; i < count; i++) {
      const seq = seqs[i];
      const index = seq >= 0 && seq <= sends.length ? stepOf[seq] : -1;
      const sent = sends[seq - 1];
      if (index < 0 || sent === undefined || sent === null) continue;
      const step = steps[index];
      const us = (times[i] + offset - sent) / 1000;
      const bucket = us < 1 ? 0 : Math.floor(Math.log(us) / LOG_GROWTH);
      step.delivered += 1;
      step.hist[bucket] = (step.hist[bucket] || 0) + 1;
    }
    const cpu = process.cpuUsage();
    const result = {
      conns: config.conns.length,
      ready,
      failed,
      closed,
      received: count,
      steps: steps.map(({ delivered, hist }) => ({ delivered, hist })),
      cpu_s: (cpu.user + cpu.system) / 1e6,
    };
    for (const ws of sockets) ws.terminate();
    // Writes to a pipe are asynchronous: exiting before this one is flushed would cut the result at 64 KiB.
    process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(0));
  });
}

main();
