// fogcharge live dashboard: draws /api/dashboard snapshots and /api/events updates as
// SVG. No libraries, no external assets.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const W = 1000;
const ARROW_MS = 20000; // a reroute stays on the map this long (wall time)
const state = { snapshot: null, selected: null, projection: null, shownReroutes: new Map() };

const $ = (id) => document.getElementById(id);

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function waitClass(s) {
  const min = s.predicted_wait_s / 60;
  return min < 5 ? "wait-low" : min < 15 ? "wait-mid" : "wait-high";
}

function fmtWait(s) {
  if (s === null || s === undefined) return "–";
  return s < 60 ? `${s} s` : `${Math.round(s / 60)} min`;
}

function fmtAge(ms) {
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// Equirectangular projection fitted to everything on the map.
function fit(snapshot) {
  const pts = [];
  for (const r of snapshot.regions) for (const p of r.outline) pts.push(p);
  for (const s of snapshot.stations) pts.push([s.lat, s.lon]);
  if (pts.length === 0) return null;
  let [minLat, maxLat, minLon, maxLon] = [90, -90, 180, -180];
  for (const [lat, lon] of pts) {
    minLat = Math.min(minLat, lat); maxLat = Math.max(maxLat, lat);
    minLon = Math.min(minLon, lon); maxLon = Math.max(maxLon, lon);
  }
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const spanX = Math.max((maxLon - minLon) * k, 1e-6);
  const spanY = Math.max(maxLat - minLat, 1e-6);
  const pad = 30;
  const scale = (W - 2 * pad) / spanX;
  const H = Math.max(200, Math.round(spanY * scale + 2 * pad));
  return {
    H,
    key: [minLat, maxLat, minLon, maxLon].join(","),
    xy: (lat, lon) => [pad + (lon - minLon) * k * scale, pad + (maxLat - lat) * scale],
  };
}

function centroid(points) {
  let x = 0, y = 0;
  for (const [px, py] of points) { x += px; y += py; }
  return [x / points.length, y / points.length];
}

function render(snapshot) {
  state.snapshot = snapshot;
  const proj = fit(snapshot);
  if (!proj) {
    setStatus("waiting for the regions' first aggregates…");
    return;
  }
  state.projection = proj;
  $("map").setAttribute("viewBox", `0 0 ${W} ${proj.H}`);
  drawRegions(snapshot, proj);
  drawStations(snapshot, proj);
  drawReroutes(snapshot.reroutes, snapshot.now_ms, snapshot.clock_speed || 1);
  drawTable(snapshot);
  drawCounters(snapshot.counters);
  if (state.selected) showDetails(state.selected);
}

function drawRegions(snapshot, proj) {
  const layer = $("regions-layer"), labels = $("labels-layer");
  layer.replaceChildren(); labels.replaceChildren();
  for (const r of snapshot.regions) {
    const pts = r.outline.map(([lat, lon]) => proj.xy(lat, lon));
    const stationPts = snapshot.stations.filter((s) => s.region === r.id).map((s) => proj.xy(s.lat, s.lon));
    const poly = el("polygon", {
      class: "region" + (r.saturated ? " saturated" : "") + (r.stale ? " stale" : ""),
      "data-region": r.id,
      points: pts.map((p) => p.join(",")).join(" "),
    }, layer);
    el("title", {}, poly).textContent =
      `${r.id}: ${r.saturated ? "saturated" : "not saturated"}, data age ${fmtAge(r.data_age_ms)}`;
    // The label sits at the top of the region, clear of the stations in its middle.
    const base = pts.length ? centroid(pts) : stationPts.length ? centroid(stationPts) : null;
    const top = pts.length ? Math.min(...pts.map((p) => p[1])) + 24 : null;
    const c = base && [base[0], top === null ? base[1] : top];
    if (c) {
      const t = el("text", { class: "region-label", x: c[0], y: c[1], "text-anchor": "middle" }, labels);
      t.textContent = r.id + (r.saturated ? " — saturated" : "");
      if (r.stale) {
        const w = el("tspan", { class: "warn", x: c[0], dy: "1.2em" }, t);
        w.textContent = `⚠ no data for ${fmtAge(r.data_age_ms)}`;
      }
    }
  }
}

// Stations are updated in place (keyed by id), so that hover, focus and a selection
// survive the snapshots that arrive every second.
function drawStations(snapshot, proj) {
  const layer = $("stations-layer");
  const seen = new Set();
  for (const s of snapshot.stations) {
    seen.add(s.station_id);
    let c = layer.querySelector(`circle[data-station="${CSS.escape(s.station_id)}"]`);
    if (!c) {
      c = el("circle", { "data-station": s.station_id, tabindex: 0, role: "button" }, layer);
      el("title", {}, c);
      const id = s.station_id;
      const select = () => { state.selected = id; showDetails(id); };
      c.addEventListener("mouseenter", () => showDetails(id));
      c.addEventListener("focus", select);
      c.addEventListener("click", select);
    }
    const [x, y] = proj.xy(s.lat, s.lon);
    c.setAttribute("class", "station " + waitClass(s) + (state.selected === s.station_id ? " selected" : ""));
    c.setAttribute("data-region", s.region);
    c.setAttribute("cx", x);
    c.setAttribute("cy", y);
    c.setAttribute("r", 4 + 2.2 * Math.sqrt(s.chargers));
    c.setAttribute("aria-label", `station ${s.station_id}, ${s.chargers} chargers, predicted wait ${fmtWait(s.predicted_wait_s)}`);
    c.firstChild.textContent =
      `${s.station_id} (${s.region}): ${s.occupied}/${s.chargers} busy, queue ${s.queue}, wait ${fmtWait(s.predicted_wait_s)}`;
  }
  for (const c of [...layer.children]) {
    if (!seen.has(c.getAttribute("data-station"))) c.remove();
  }
}

function showDetails(id) {
  const s = state.snapshot && state.snapshot.stations.find((x) => x.station_id === id);
  const box = $("details");
  if (!s) { box.innerHTML = '<p class="hint">That station is gone.</p>'; return; }
  for (const c of document.querySelectorAll(".station.selected")) c.classList.remove("selected");
  const mark = document.querySelector(`.station[data-station="${CSS.escape(state.selected || "")}"]`);
  if (mark) mark.classList.add("selected");
  const rows = [
    ["station", s.station_id], ["region", s.region], ["chargers", `${s.chargers} × ${s.power_kw} kW`],
    ["occupied", s.occupied], ["queue", s.queue], ["reservations", s.reservations],
    ["predicted wait", fmtWait(s.predicted_wait_s)], ["data age", fmtAge(s.data_age_ms)],
  ];
  const dl = document.createElement("dl");
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  }
  box.replaceChildren(dl);
}

function drawReroutes(list, nowMs, speed) {
  // Reroutes in the snapshot: draw the ones not drawn yet and still recent (in wall
  // time: central's clock may run `speed` times faster).
  for (const r of list || []) {
    if ((nowMs - r.at_ms) / speed < ARROW_MS) addReroute(r);
  }
}

function rerouteKey(r) { return `${r.at_ms}/${r.vehicle_id}/${r.station_id}`; }

function addReroute(r) {
  const key = rerouteKey(r);
  if (state.shownReroutes.has(key) || !state.projection) return;
  const [x1, y1] = state.projection.xy(r.from[0], r.from[1]);
  const [x2, y2] = state.projection.xy(r.to[0], r.to[1]);
  const line = el("line", {
    class: "reroute", x1, y1, x2, y2,
    "data-origin": r.origin_region, "data-target": r.target_region,
  }, $("reroutes-layer"));
  el("title", {}, line).textContent = `${r.vehicle_id}: ${r.origin_region} → ${r.station_id} (${r.target_region})`;
  state.shownReroutes.set(key, line);
  setTimeout(() => line.classList.add("old"), ARROW_MS / 2);
  setTimeout(() => { line.remove(); state.shownReroutes.delete(key); }, ARROW_MS);
  {
    const li = document.createElement("li");
    li.textContent = `${r.vehicle_id}: ${r.origin_region} → ${r.target_region} (${r.station_id})`;
    $("reroutes-list").prepend(li);
    while ($("reroutes-list").childElementCount > 30) $("reroutes-list").lastChild.remove();
  }
}

function drawTable(snapshot) {
  const body = document.querySelector("#regions-table tbody");
  body.replaceChildren();
  for (const r of snapshot.regions) {
    const tr = document.createElement("tr");
    tr.dataset.region = r.id;
    if (r.saturated) tr.classList.add("saturated");
    if (r.stale) tr.classList.add("stale");
    const state = r.stale ? "⚠ stale" : r.saturated ? "saturated" : "ok";
    const cells = [
      [r.id, "id"], [`${r.stations_in_service}/${r.stations}`, "stations"], [`${r.chargers_free}/${r.chargers}`, "free"],
      [r.queued, "queued"], [fmtWait(r.min_wait_s), "wait"], [fmtAge(r.data_age_ms), "age"], [state, "state"],
    ];
    for (const [v, cls] of cells) {
      const td = document.createElement("td"); td.textContent = v; td.className = cls; tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function drawCounters(c) {
  $("c-rate").textContent = c.requests_per_s.toFixed(1);
  $("c-reroutes").textContent = c.reroutes_succeeded;
  $("c-failed").textContent = c.reroutes_failed;
  $("c-saturated").textContent = c.saturated_requests;
}

function setStatus(text, down) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("down", !!down);
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => setStatus("live"));
  events.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    render(snap);
    const stale = snap.regions.filter((r) => r.stale).map((r) => r.id);
    setStatus(stale.length ? `live — no fresh data from ${stale.join(", ")}` : `live — ${snap.regions.length} regions, ${snap.stations.length} stations`, stale.length > 0);
  });
  events.addEventListener("reroute", (e) => addReroute(JSON.parse(e.data)));
  events.addEventListener("error", () => setStatus("connection to central lost — retrying…", true));
}

fetch("/api/dashboard").then((r) => r.json()).then(render).catch(() => {});
connect();
