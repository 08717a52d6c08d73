// fogcharge simulation report: device-sim's JSON report drawn as SVG charts.
"use strict";

const NS = "http://www.w3.org/2000/svg";

function node(name, attrs, parent, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

// Grouped bar chart: groups (x labels) × series (strategies). Values below 0 hang
// below the zero line.
function bars(title, unit, groups, series, id) {
  const fig = document.createElement("figure");
  fig.id = id;
  const cap = document.createElement("figcaption");
  cap.textContent = title;
  fig.appendChild(cap);
  const W = 480, H = 260, left = 48, bottom = 40, top = 10;
  const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const values = series.flatMap((s) => s.values);
  const max = Math.max(1e-9, ...values), min = Math.min(0, ...values);
  const y = (v) => top + ((H - top - bottom) * (max - v)) / (max - min);
  const gw = (W - left - 10) / groups.length;
  const bw = Math.min(28, (gw - 10) / series.length);
  for (let t = 0; t <= 4; t++) {
    const v = min + ((max - min) * t) / 4;
    node("line", { x1: left, x2: W - 5, y1: y(v), y2: y(v), stroke: "#e0e0e0" }, svg);
    node("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end" }, svg, Math.abs(v) >= 10 ? v.toFixed(0) : v.toFixed(1));
  }
  if (min < 0) node("line", { x1: left, x2: W - 5, y1: y(0), y2: y(0), stroke: "#555" }, svg);
  groups.forEach((g, gi) => {
    const x0 = left + gi * gw + (gw - bw * series.length) / 2;
    series.forEach((s, si) => {
      const v = s.values[gi] || 0;
      const r = node("rect", { class: `s${si} bar`, x: x0 + si * bw, y: y(Math.max(v, 0)), width: bw - 2, height: Math.abs(y(v) - y(0)) }, svg);
      node("title", {}, r, `${s.name} ${g}: ${v.toFixed(1)} ${unit}`);
    });
    node("text", { x: left + gi * gw + gw / 2, y: H - bottom + 16, "text-anchor": "middle" }, svg, g);
  });
  node("text", { x: 4, y: 12 }, svg, unit);
  fig.appendChild(svg);
  const legend = document.createElement("p");
  series.forEach((s, si) => {
    const k = document.createElementNS(NS, "svg");
    k.setAttribute("class", "key"); k.setAttribute("viewBox", "0 0 10 10");
    node("rect", { class: `s${si}`, width: 10, height: 10 }, k);
    legend.append(k, `${s.name}  `);
  });
  fig.appendChild(legend);
  document.getElementById("charts").appendChild(fig);
}

// A promise's signed error (actual − promised wait): p50, p95, max in minutes.
function promiseError(p) {
  return [p.error_s.p50, p.error_s.p95, p.error_s.max].map((v) => v / 60);
}

function draw(report) {
  const names = report.order && report.order.length ? report.order : Object.keys(report.strategies);
  const sc = report.scenario || {};
  document.getElementById("scenario").textContent =
    `seed ${sc.seed}, ${sc.vehicles} vehicles, ${sc.stations} stations (${report.station_transport === "ocpp" ? "OCPP 1.6J charge points through each region's gateway" : "MQTT clients"}), ${sc.hours} simulated hours — strategies: ${names.join(", ")}`;
  const rows = [
    ["requests", (r) => r.requests], ["answered", (r) => r.answered], ["rerouted", (r) => r.rerouted],
    ["stranded", (r) => r.stranded], ["charged", (r) => r.charged],
    ["wait mean (min)", (r) => (r.wait_s.mean / 60).toFixed(1)], ["wait p95 (min)", (r) => (r.wait_s.p95 / 60).toFixed(1)],
    ["wait max (min)", (r) => (r.wait_s.max / 60).toFixed(1)],
    ["round trip p50 (ms)", (r) => (r.rtt_ms ? r.rtt_ms.p50.toFixed(1) : "–")],
    ["round trip p99 (ms)", (r) => (r.rtt_ms ? r.rtt_ms.p99.toFixed(1) : "–")],
    // Promised waits (the answer's wait_s) against actual ones; "–" for strategies that
    // promise nothing.
    ["promises checked", (r) => (r.promise ? r.promise.checked : "–")],
    ["promises kept (±5 min)", (r) => (r.promise ? `${(r.promise.kept_share * 100).toFixed(0)}%` : "–")],
    ["promises broken (>10 min late)", (r) => (r.promise ? r.promise.broken : "–")],
    ["promise error p50 / p95 / max (min, > 0 late)", (r) => (r.promise ? promiseError(r.promise).map((v) => v.toFixed(1)).join(" / ") : "–")],
    ["revised answers followed", (r) => (r.promise ? r.promise.revised : "–")],
    ["charger faults", (r) => (r.faults === undefined ? "–" : r.faults)],
  ];
  const head = document.querySelector("#summary thead");
  const tr = document.createElement("tr");
  for (const h of ["", ...names]) { const th = document.createElement("th"); th.scope = "col"; th.textContent = h; tr.appendChild(th); }
  head.appendChild(tr);
  const body = document.querySelector("#summary tbody");
  for (const [label, f] of rows) {
    const row = document.createElement("tr");
    const th = document.createElement("th"); th.scope = "row"; th.textContent = label; row.appendChild(th);
    for (const n of names) { const td = document.createElement("td"); td.textContent = f(report.strategies[n]); row.appendChild(td); }
    body.appendChild(row);
  }
  const strategies = names.map((n) => ({ name: n, r: report.strategies[n] }));
  bars("Wait at the station (minutes)", "min", ["mean", "p95", "max"],
    strategies.map((s) => ({ name: s.name, values: [s.r.wait_s.mean / 60, s.r.wait_s.p95 / 60, s.r.wait_s.max / 60] })), "chart-wait");
  const hist = strategies.find((s) => s.r.wait_s.hist && s.r.wait_s.hist.length);
  if (hist) {
    const labels = hist.r.wait_s.hist.map((b) => (b.to_min === null || b.to_min === undefined ? `${b.from_min}+` : `${b.from_min}–${b.to_min}`));
    bars("Wait distribution (vehicles per wait band, minutes)", "vehicles", labels,
      strategies.map((s) => ({ name: s.name, values: (s.r.wait_s.hist || []).map((b) => b.count) })), "chart-hist");
  }
  const withRtt = strategies.filter((s) => s.r.rtt_ms);
  if (withRtt.length) {
    bars("Request → answer round trip (ms)", "ms", ["p50", "p95", "p99", "max"],
      withRtt.map((s) => ({ name: s.name, values: [s.r.rtt_ms.p50, s.r.rtt_ms.p95, s.r.rtt_ms.p99, s.r.rtt_ms.max] })), "chart-rtt");
  }
  const withPromise = strategies.filter((s) => s.r.promise && s.r.promise.checked > 0);
  if (withPromise.length) {
    bars("Actual wait − promised wait (minutes; above 0: later than promised)", "min", ["p50", "p95", "max"],
      withPromise.map((s) => ({ name: s.name, values: promiseError(s.r.promise) })), "chart-promise");
  }
  bars("Outcomes", "vehicles", ["charged", "stranded", "queued at end", "rerouted"],
    strategies.map((s) => ({ name: s.name, values: [s.r.charged, s.r.stranded, s.r.queued_at_end, s.r.rerouted] })), "chart-outcomes");
}

const inline = document.getElementById("report-data");
if (inline) {
  draw(JSON.parse(inline.textContent));
} else {
  fetch("/api/report")
    .then((r) => (r.ok ? r.json() : r.text().then((t) => Promise.reject(new Error(t)))))
    .then(draw)
    .catch((e) => { document.getElementById("error").textContent = `No report: ${e.message}`; });
}
