// A time-series line chart drawn as SVG: the dashboard's only chart, so a few dozen lines of our own
// instead of a library to vendor. Keeps the last `span` seconds of points per series; an optional
// threshold draws as a dashed red line, and the y axis always shows it.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

export class LineChart {
  constructor(svg, { span = 120, threshold = null, unit = "" } = {}) {
    this.svg = svg;
    this.span = span * 1000;
    this.threshold = threshold;
    this.unit = unit;
    this.series = new Map(); // name -> [[t, v], ...]
    this.colors = ["#2f6fde", "#e0782d", "#1e9f6a", "#8e44ad", "#c0392b", "#16a0b8"];
  }

  push(t, values) {
    for (const [name, v] of Object.entries(values)) {
      if (v === null || v === undefined || Number.isNaN(v)) continue;
      if (!this.series.has(name)) this.series.set(name, []);
      this.series.get(name).push([t, v]);
    }
    for (const points of this.series.values()) {
      while (points.length && points[0][0] < t - this.span) points.shift();
    }
    this.draw(t);
  }

  draw(now) {
    const width = 600, height = 140, left = 44, bottom = 16;
    let max = this.threshold ?? 0;
    for (const points of this.series.values()) for (const [, v] of points) max = Math.max(max, v);
    max = max > 0 ? max * 1.15 : 1;
    const x = (t) => left + ((t - (now - this.span)) / this.span) * (width - left);
    const y = (v) => (height - bottom) * (1 - v / max);
    const parts = [];
    parts.push(`<line x1="${left}" y1="${height - bottom}" x2="${width}" y2="${height - bottom}" stroke="#ccd"/>`);
    parts.push(`<text x="2" y="12" font-size="11" fill="#667">${fmt(max)}${this.unit}</text>`);
    parts.push(`<text x="2" y="${height - bottom}" font-size="11" fill="#667">0</text>`);
    if (this.threshold !== null) {
      const ty = y(this.threshold).toFixed(1);
      parts.push(`<line x1="${left}" y1="${ty}" x2="${width}" y2="${ty}" stroke="#b3261e" stroke-dasharray="5,4"/>`);
    }
    let i = 0;
    const legend = [];
    for (const [name, points] of this.series) {
      const color = this.colors[i++ % this.colors.length];
      const path = points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${path}"/>`);
      legend.push(`<tspan fill="${color}">■ ${escape(name)}  </tspan>`);
    }
    parts.push(`<text x="${left + 4}" y="${height - 2}" font-size="11">${legend.join("")}</text>`);
    this.svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    this.svg.innerHTML = parts.join("");
  }
}

export function fmt(v) {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export { SVG };
