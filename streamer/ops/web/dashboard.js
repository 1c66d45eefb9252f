// streamer dashboard: one server-sent event stream (/events) feeds every chart on the page.
//
//   history  the last ten minutes of per-second metrics, as columns (on connect)
//   status   workers, top-row figures, errors (on connect, then inside every tick)
//   tick     one more second of metrics, with the status
//   entity   the picked entity's points: all of them ("full") or the new ones to append
//
// window.streamerDashboard.state() reports what the charts hold, for tests and for curious people.
"use strict";

(function () {
  const COLORS = ["#2563eb", "#16a34a", "#ea580c", "#7c3aed", "#dc2626", "#0891b2", "#ca8a04", "#db2777"];
  const HISTORY_S = 600;
  const ENTITY_HEIGHT = 420;
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- number formats

  function fmtNum(v, digits) {
    if (v == null || !isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return String(+v.toFixed(digits == null ? 1 : Math.min(digits, 1)));
    return String(+v.toFixed(digits == null ? 2 : digits));
  }
  function fmtInt(v) {
    return v == null ? "–" : Math.round(v).toLocaleString("en-US");
  }
  function fmtSec(v) {
    if (v == null || !isFinite(v)) return "–";
    if (v < 1e-3) return (v * 1e6).toFixed(0) + " µs";
    if (v < 1) return (v * 1e3).toFixed(v < 0.01 ? 1 : 0) + " ms";
    if (v < 100) return v.toFixed(v < 10 ? 2 : 1) + " s";
    return (v / 60).toFixed(1) + " min";
  }
  function fmtValue(v) {
    if (v == null || !isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
    return v.toLocaleString("en-US", { maximumSignificantDigits: 6 });
  }
  function fmtClock(t) {
    return t == null ? "–" : new Date(t * 1000).toLocaleTimeString("en-GB");
  }
  function clockAxis(u, splits) {
    const span = u.scales.x.max - u.scales.x.min;
    return splits.map((t) => (span > 180 ? fmtClock(t).slice(0, 5) : fmtClock(t)));
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  // ---------------------------------------------------------------- charts

  const AXIS = { stroke: "#6b7280", font: "11px system-ui, sans-serif", grid: { stroke: "#eef0f3", width: 1 }, ticks: { stroke: "#e3e5e8", width: 1 } };
  const charts = {}; // name -> { plot, el, height }

  function sized(el, height) {
    return { width: Math.max(200, el.clientWidth), height: height };
  }

  function linearFromZero(u, min, max) {
    return [0, max == null || max <= 0 ? 1 : max * 1.1];
  }

  function logRange(u, min, max) {
    if (min == null || max == null || !(min > 0)) return [0.001, 1];
    return uPlot.rangeLog(min, max, 10, true);
  }

  function metricChart(name, el, series, opts) {
    opts = opts || {};
    const old = charts[name];
    if (old) old.plot.destroy();
    const fmt = opts.fmt || fmtNum;
    const yAxis = Object.assign({}, AXIS, { size: 58, space: 20, values: (u, splits) => splits.map((v) => (v == null ? "" : fmt(v))) });
    if (opts.log) {
      // Decades only: a log axis otherwise draws a line at every 2, 3, ... 9 of each decade.
      const decades = (u, splits) => splits.map((v) => (Math.abs(Math.log10(v) % 1) < 1e-9 ? v : null));
      yAxis.filter = decades;
      yAxis.grid = Object.assign({}, AXIS.grid, { filter: decades });
      yAxis.ticks = Object.assign({}, AXIS.ticks, { filter: decades });
    }
    const options = Object.assign(sized(el, opts.height || 98), {
      series: [{ value: (u, v) => fmtClock(v) }].concat(series.map((s, i) => ({
        label: s.label,
        stroke: s.color || COLORS[i % COLORS.length],
        width: 1.5,
        dash: s.dash,
        fill: s.fill,
        value: (u, v) => (v == null ? "–" : fmt(v)),
        points: { show: false },
      }))),
      axes: [Object.assign({}, AXIS, { size: 26, space: 70, values: clockAxis }), yAxis],
      scales: { x: { time: true }, y: opts.log ? { distr: 3, log: 10, range: logRange } : { range: linearFromZero } },
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    });
    const data = [[]].concat(series.map(() => []));
    charts[name] = { plot: new uPlot(options, data, el), el: el, height: options.height };
    return charts[name].plot;
  }

  // Out of the cursor's way, a legend shows the latest values: a live readout.
  // (After uPlot's own deferred redraw, which would reset the legend of a new chart.)
  function showLatest(u, idx) {
    setTimeout(() => {
      const n = u.data[0].length;
      if (n && !(u.cursor.left >= 0)) u.setLegend({ idx: idx == null ? n - 1 : idx });
    }, 0);
  }

  const observer = new ResizeObserver(() => {
    for (const c of Object.values(charts)) {
      const w = Math.max(200, c.el.clientWidth);
      if (Math.abs(c.plot.width - w) > 1) {
        c.plot.setSize({ width: w, height: c.height });
        showLatest(c.plot, c.latest ? c.latest() : null);
      }
    }
  });

  // ---------------------------------------------------------------- metrics

  let hist = emptyHistory();
  let deadReasons = "";
  let lastStatus = null;
  let connected = false;
  let knownEntities = null;

  function emptyHistory() {
    return { t: [], events: [], predictions: [], dead_total: [], p50: [], p95: [], p99: [], lag: [], batch: [], step_ms: [], dead: {} };
  }

  function setHistory(cols) {
    hist = emptyHistory();
    for (const k of Object.keys(hist)) if (cols[k] !== undefined) hist[k] = cols[k];
    drawMetrics();
  }

  function pushTick(t) {
    const n = hist.t.length;
    for (const k of Object.keys(hist)) if (k !== "dead") hist[k].push(t[k] === undefined ? null : t[k]);
    for (const r of Object.keys(t.dead || {})) if (!hist.dead[r]) hist.dead[r] = new Array(n).fill(null);
    for (const r of Object.keys(hist.dead)) {
      const v = t.dead && t.dead[r] !== undefined ? t.dead[r] : t.events == null ? null : 0;
      hist.dead[r].push(v);
    }
    if (hist.t.length > HISTORY_S) {
      const cut = hist.t.length - HISTORY_S;
      for (const k of Object.keys(hist)) if (k !== "dead") hist[k].splice(0, cut);
      for (const r of Object.keys(hist.dead)) hist.dead[r].splice(0, cut);
    }
    drawMetrics();
  }

  function drawMetrics() {
    const pos = (xs) => xs.map((v) => (v != null && v > 0 ? v : null)); // log scale
    charts.throughput.plot.setData([hist.t, hist.events, hist.predictions]);
    charts.lag.plot.setData([hist.t, hist.lag]);
    charts.latency.plot.setData([hist.t, pos(hist.p50), pos(hist.p95), pos(hist.p99)]);
    const reasons = Object.keys(hist.dead).sort();
    if (reasons.join("\n") !== deadReasons || !charts.dead) {
      deadReasons = reasons.join("\n");
      const series = reasons.length
        ? reasons.map((r, i) => ({ label: r, color: COLORS[(i + 4) % COLORS.length] }))
        : [{ label: "all reasons", color: "#dc2626" }];
      metricChart("dead", $("c-dead"), series);
    }
    const cols = reasons.length ? reasons.map((r) => hist.dead[r]) : [hist.dead_total];
    charts.dead.plot.setData([hist.t].concat(cols));
    for (const name of ["throughput", "lag", "latency", "dead"]) showLatest(charts[name].plot);
  }

  function renderStatus(s) {
    lastStatus = s;
    const sum = s.summary || {};
    $("app").textContent = `app ${s.app_id} · ${s.topics.events} → ${s.topics.predictions}`;
    $("k-events").textContent = fmtNum(sum.events_s);
    $("k-predictions").textContent = fmtNum(sum.predictions_s);
    $("k-lag").textContent = fmtInt(sum.lag);
    $("k-lag-src").textContent = sum.lag_source ? `from ${sum.lag_source}` : "";
    $("k-latency").textContent = sum.p50 == null ? "–" : `${fmtSec(sum.p50)} · ${fmtSec(sum.p95)} · ${fmtSec(sum.p99)}`;
    $("k-dead").textContent = fmtNum(sum.dead_letters_s);
    $("k-batch").textContent = sum.batch_mean == null ? "–" : `${fmtNum(sum.batch_mean, 0)} · ${fmtSec(sum.step_ms / 1000)}`;
    const live = s.workers.filter((w) => w.ok).length;
    activity = live === 0 ? "no workers" : sum.events_s > 0 || sum.predictions_s > 0 ? "live" : "idle";
    showBadge();
    $("k-workers").textContent = s.workers.length === live ? String(live) : `${live} of ${s.workers.length}`;
    $("errors").textContent = (s.errors || []).join(" · ");
    $("entity-count").textContent = `${fmtInt(s.entities)} entities · ${fmtInt(s.predictions_read)} predictions read` + (s.reader === "reading" ? "" : ` · ${s.reader}`);
    const parts = Object.entries(sum.lag_partitions || {});
    $("lag-parts").textContent = parts.length > 1 && parts.length <= 16 ? parts.map(([p, n]) => `p${p} ${fmtInt(n)}`).join(" · ") : "";
    $("discovery").textContent = s.discovery === "redis" ? "announced in Redis" : "given with --metrics";
    renderWorkers(s.workers);
    if (!entity.name && s.entities !== knownEntities) renderSuggestions();
    knownEntities = s.entities;
  }

  function renderWorkers(workers) {
    const body = $("workers").querySelector("tbody");
    if (!workers.length) {
      body.innerHTML = `<tr><td class="none" colspan="7">no live workers</td></tr>`;
      return;
    }
    body.innerHTML = workers.map((w) => {
      const status = w.ok ? `<span class="ok">● ok</span>` : `<span class="bad">● ${esc(w.status)}</span>`;
      return `<tr data-worker="${esc(w.id)}" data-ok="${w.ok}">
        <td class="id">${esc(w.id)}</td><td>${esc(w.host || "")}</td>
        <td class="id">${esc(w.model_version || "–")}</td>
        <td>${w.partitions.length ? esc(w.partitions.join(", ")) : "–"}</td>
        <td class="num">${fmtNum(w.events_s)}</td><td class="num">${fmtInt(w.lag)}</td>
        <td>${status}</td></tr>`;
    }).join("");
  }

  // ---------------------------------------------------------------- entity

  const entity = { name: null, missing: false, cols: null, axis: null, plot: null, classesKey: null, updates: 0, appends: 0 };

  function emptyEntity() {
    return { x: [], ds: [], y: [], prior: [], step: [], version: [], probs: [], surprise: [], rank: [], next: null, future_x: [], future: [], future_lo: [], future_hi: [], level: null, classes: [], max_points: 500 };
  }

  function onEntity(v) {
    if (v.entity !== entity.name) return;
    if (v.missing) {
      entity.missing = true;
      entity.cols = null;
      drawEntity();
      return;
    }
    entity.missing = false;
    entity.updates++;
    if (!v.full && entity.cols) entity.appends++;
    const c = !v.full && entity.cols ? entity.cols : emptyEntity();
    const cols = v.next ? ["x", "ds", "y", "prior", "step", "version", "surprise", "rank"] : ["x", "ds", "y", "prior", "step", "version"];
    for (const k of cols) c[k] = c[k].concat(v[k]);
    if (v.probs) c.probs = v.classes.map((_, i) => (c.probs[i] || []).concat(v.probs[i]));
    const extra = c.x.length - v.max_points;
    if (extra > 0) {
      for (const k of cols) c[k].splice(0, extra);
      for (const p of c.probs) p.splice(0, extra);
    }
    c.next = v.next || null;
    c.future_x = v.future_x;
    c.future = v.future;
    c.future_lo = v.future_lo || [];
    c.future_hi = v.future_hi || [];
    c.level = v.level;
    c.classes = v.classes;
    c.max_points = v.max_points;
    entity.cols = c;
    entity.axis = v.axis;
    drawEntity();
  }

  function entityData(c) {
    const n = c.x.length;
    const pad = new Array(c.future_x.length).fill(null);
    const x = c.x.concat(c.future_x);
    if (c.next) return [c.x, c.surprise, c.rank]; // a next-event model: each event's surprise
    if (c.classes.length) return [x, c.y.concat(pad)].concat(c.probs.map((p) => p.concat(pad)));
    const future = new Array(n).fill(null).concat(c.future);
    if (n && c.future.length) future[n - 1] = c.y[n - 1]; // the forecast line starts at the last value
    const bounds = (b) => (b.length ? new Array(n).fill(null).concat(b) : new Array(x.length).fill(null));
    return [x, c.y.concat(pad), c.prior.concat(pad), future, bounds(c.future_lo), bounds(c.future_hi)];
  }

  function entityChart(c) {
    const key = `${entity.axis}|${c.classes.join("\n")}|${c.level}|${c.next ? "next" : ""}`;
    if (entity.plot && entity.classesKey === key) return entity.plot;
    if (entity.plot) entity.plot.destroy();
    entity.classesKey = key;
    const time = entity.axis === "time";
    const xLabel = (u, v, si, i) => {
      const cols = entity.cols;
      if (i == null || !cols) return "–";
      if (i < cols.ds.length) return `${cols.ds[i]} (step ${cols.step[i]})`;
      return `forecast +${i - cols.ds.length + 1}`;
    };
    const series = [{ label: time ? "ds" : "event", value: xLabel }];
    if (c.next) {
      // how unlikely each event was under the prediction made before it; its rank there
      const rank = (u, v, si, i) => (entity.cols && i != null && entity.cols.rank[i] != null ? `#${entity.cols.rank[i]}` : "not named");
      series.push({ label: "surprise, -ln p (under the prediction before)", stroke: "#7c3aed", width: 1.5, points: { size: 4, fill: "#7c3aed" }, value: (u, v) => (v == null ? "–" : v.toFixed(2)) });
      series.push({ label: "its rank there", show: false, value: rank });
    } else {
      series.push({ label: "value (y)", stroke: "#2563eb", width: 2, points: { size: 4, fill: "#2563eb" }, value: (u, v) => fmtValue(v) });
    }
    const axes = [Object.assign({}, AXIS), Object.assign({}, AXIS, { size: 60, values: (u, s) => s.map((v) => (v == null ? "" : fmtNum(v))) })];
    const scales = { x: { time: time } };
    if (c.classes.length) {
      c.classes.forEach((name, i) => series.push({ label: `p(${name})`, scale: "p", stroke: COLORS[(i + 1) % COLORS.length], width: 1.5, value: (u, v) => (v == null ? "–" : v.toFixed(3)) }));
      axes.push(Object.assign({}, AXIS, { scale: "p", side: 1, size: 40, grid: { show: false } }));
      scales.p = { range: [0, 1] };
    } else if (!c.next) { // (a next-event model: the values it names are in the line above)
      series.push({ label: "one-step forecast (made at the event before)", stroke: "#ea580c", width: 1.5, dash: [6, 4], points: { size: 3, fill: "#ea580c" }, value: (u, v) => fmtValue(v) });
      // Its first point is the last value (the line starts there): not a forecast, not shown.
      const future = (u, v, si, i) => (entity.cols && i >= entity.cols.x.length ? fmtValue(v) : "–");
      series.push({ label: "latest forecast", stroke: "#b91c1c", width: 2, dash: [2, 3], points: { show: true, size: 5, fill: "#fff" }, value: future });
      // its widest prediction interval, a shaded band between its lows and highs
      const level = c.level ? `${c.level}% interval` : "interval";
      series.push({ label: `${level} low`, stroke: "rgba(185,28,28,0.35)", width: 1, show: c.level != null, value: future });
      series.push({ label: `${level} high`, stroke: "rgba(185,28,28,0.35)", width: 1, show: c.level != null, value: future });
    }
    const el = $("entity-chart");
    const bands = c.classes.length || c.next ? [] : [{ series: [5, 4], fill: "rgba(185,28,28,0.10)" }];
    entity.plot = new uPlot(Object.assign(sized(el, ENTITY_HEIGHT), {
      series: series,
      bands: bands,
      axes: axes,
      scales: scales,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"), // ds has no time zone
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    }), [[]].concat(series.slice(1).map(() => [])), el);
    const latest = () => (entity.cols ? entity.cols.x.length - 1 : null);
    charts.entity = { plot: entity.plot, el: el, height: ENTITY_HEIGHT, latest: latest };
    return entity.plot;
  }

  function drawEntity() {
    const c = entity.cols;
    const empty = $("entity-empty");
    if (!entity.name || !c || !c.x.length) {
      if (entity.plot) { entity.plot.destroy(); entity.plot = null; entity.classesKey = null; delete charts.entity; }
      $("entity-info").innerHTML = "";
      if (entity.name) empty.textContent = entity.missing ? `No predictions for ${entity.name} yet: waiting for them.` : "Loading…";
      else renderSuggestions();
      return;
    }
    empty.textContent = "";
    const plot = entityChart(c);
    plot.setData(entityData(c));
    showLatest(plot, c.x.length - 1);
    const n = c.y.length;
    let info = `<b>${esc(entity.name)}</b> · ${fmtInt(n)} points · last <b>${esc(c.ds[n - 1])}</b>`;
    if (!c.next) info += ` y <b>${fmtValue(c.y[n - 1])}</b>`;
    if (c.next) {
      const named = c.next.slice(0, 5).map((name, i) => `<b>${esc(name)}</b> (${c.future[i].toFixed(3)})`);
      info += ` · next ${named.join(", ")}${c.next.length > 5 ? ", …" : ""}`;
      let sum = 0, m = 0, hits = 0;
      for (let i = 0; i < n; i++) if (c.surprise[i] != null) { sum += c.surprise[i]; m++; if (c.rank[i] != null) hits++; }
      if (m) info += ` · mean surprise <b>${(sum / m).toFixed(2)}</b>, named before <b>${fmtInt(hits)}</b> of ${fmtInt(m)}`;
    } else if (c.classes.length) {
      const probs = c.probs.map((p) => p[n - 1]);
      const best = probs.indexOf(Math.max.apply(null, probs));
      info += ` · predicted <b>${esc(c.classes[best])}</b> (${probs[best].toFixed(2)})`;
    } else {
      info += ` · next <b>${c.future.slice(0, 4).map(fmtValue).join(", ")}${c.future.length > 4 ? ", …" : ""}</b>`;
      let err = 0, m = 0;
      for (let i = 0; i < n; i++) if (c.prior[i] != null) { err += Math.abs(c.prior[i] - c.y[i]); m++; }
      if (m) info += ` · one-step MAE <b>${fmtValue(err / m)}</b> over ${m}`;
    }
    info += ` · model <b>${esc(c.version[n - 1])}</b> · step ${c.step[n - 1]}`;
    $("entity-info").innerHTML = info;
  }

  let suggested = "";
  async function renderSuggestions() {
    const empty = $("entity-empty");
    if (entity.name) return;
    try {
      const r = await (await fetch("/api/entities?limit=8")).json();
      const key = r.entities.join("\n");
      if (key === suggested && empty.textContent) return;
      suggested = key;
      empty.innerHTML = r.entities.length
        ? "Pick an entity: " + r.entities.map((e) => `<a data-entity="${esc(e)}">${esc(e)}</a>`).join("") + (r.total > r.entities.length ? " …" : "")
        : "No predictions read yet.";
    } catch (e) { /* the stream reports the outage */ }
  }

  $("entity-empty").addEventListener("click", (ev) => {
    const a = ev.target.closest("a[data-entity]");
    if (a) select(a.dataset.entity);
  });

  // ---------------------------------------------------------------- picker

  let lookup = null;
  $("entity-input").addEventListener("input", (ev) => {
    clearTimeout(lookup);
    lookup = setTimeout(async () => {
      try {
        const q = encodeURIComponent(ev.target.value.trim());
        const r = await (await fetch(`/api/entities?q=${q}&limit=30`)).json();
        $("entity-options").innerHTML = r.entities.map((e) => `<option value="${esc(e)}">`).join("");
      } catch (e) { /* keep the old suggestions */ }
    }, 120);
  });
  $("entity-input").addEventListener("change", (ev) => {
    // picked from the suggestions: show it at once
    const v = ev.target.value.trim();
    const known = Array.from($("entity-options").options).some((o) => o.value === v);
    if (known) select(v);
  });
  $("pick").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("entity-input").value.trim();
    if (v) select(v);
  });

  function select(name) {
    if (name === entity.name) return;
    entity.name = name;
    entity.cols = null;
    entity.missing = false;
    $("entity-input").value = name;
    const url = new URL(window.location.href);
    url.searchParams.set("entity", name);
    window.history.replaceState(null, "", url);
    drawEntity();
    connect();
  }

  // ---------------------------------------------------------------- the stream

  let source = null;
  // The badge: the page's connection first, then what the workers do: "no workers" when none is
  // announced, "idle" when they consume nothing, "live" when events flow.
  let activity = "live";
  function showBadge() {
    const el = $("conn");
    const text = connected ? activity : "reconnecting…";
    el.textContent = text;
    el.className = "pill " + (!connected ? "down" : text === "live" ? "live" : "idle");
  }

  function setConnected(ok) {
    connected = ok;
    showBadge();
  }

  function connect() {
    if (source) source.close();
    source = new EventSource("/events" + (entity.name ? "?entity=" + encodeURIComponent(entity.name) : ""));
    source.onopen = () => setConnected(true);
    source.onerror = () => setConnected(false);
    source.addEventListener("history", (ev) => setHistory(JSON.parse(ev.data)));
    source.addEventListener("status", (ev) => renderStatus(JSON.parse(ev.data)));
    source.addEventListener("tick", (ev) => {
      const d = JSON.parse(ev.data);
      pushTick(d.tick);
      renderStatus(d);
    });
    source.addEventListener("entity", (ev) => onEntity(JSON.parse(ev.data)));
  }

  // ---------------------------------------------------------------- start

  metricChart("throughput", $("c-throughput"), [
    { label: "events/s", color: "#2563eb" },
    { label: "predictions/s", color: "#16a34a", dash: [5, 4] },
  ]);
  metricChart("lag", $("c-lag"), [{ label: "lag", color: "#7c3aed", fill: "rgba(124, 58, 237, 0.08)" }], { fmt: (v) => fmtNum(v, 0) });
  metricChart("latency", $("c-latency"), [
    { label: "p50", color: "#16a34a" },
    { label: "p95", color: "#ea580c" },
    { label: "p99", color: "#dc2626" },
  ], { log: true, fmt: fmtSec });
  for (const id of ["c-throughput", "c-lag", "c-latency", "c-dead", "entity-chart"]) observer.observe($(id));

  const first = new URLSearchParams(window.location.search).get("entity");
  if (first) select(first.trim());
  else { drawEntity(); connect(); }

  // ---------------------------------------------------------------- for tests

  function column(name, i) {
    const c = charts[name];
    return c ? c.plot.data[i] || [] : [];
  }
  const present = (xs) => xs.filter((v) => v != null);

  window.streamerDashboard = {
    state() {
      const d = entity.plot ? entity.plot.data : null;
      const ys = d ? present(d[1]) : [];
      const forecaster = entity.cols && !entity.cols.classes.length && !entity.cols.next;
      const events = present(column("throughput", 1));
      return {
        connected: connected,
        badge: $("conn").textContent,
        ticks: hist.t.length,
        entity: entity.name,
        missing: entity.missing,
        updates: entity.updates, // entity messages received
        appends: entity.appends, // of which new points appended to those drawn
        axis: entity.axis,
        kind: entity.cols ? (entity.cols.next ? "next" : forecaster ? "forecast" : "classify") : null,
        points: ys.length,
        ys: ys,
        firstY: ys.length ? ys[0] : null,
        lastY: ys.length ? ys[ys.length - 1] : null,
        priors: d && forecaster ? present(d[2]) : [],
        priorPoints: d && forecaster ? present(d[2]).length : 0,
        future: entity.cols ? entity.cols.future : [],
        // the band drawn around it: its widest interval, as plotted
        level: entity.cols ? entity.cols.level : null,
        bandLo: d && forecaster ? present(d[4]) : [],
        bandHi: d && forecaster ? present(d[5]) : [],
        forecastPoints: entity.cols ? entity.cols.future.length : 0,
        next: entity.cols ? entity.cols.next : null, // a next-event model's named values
        info: $("entity-info").innerText,
        eventsPerSecond: events.length ? events[events.length - 1] : null,
        eventsPerSecondMax: events.length ? Math.max.apply(null, events) : null,
        predictionsPerSecondMax: Math.max.apply(null, [0].concat(present(column("throughput", 2)))),
        kpiEvents: $("k-events").textContent,
        workers: lastStatus ? lastStatus.workers.map((w) => ({ id: w.id, ok: w.ok, status: w.status, url: w.url })) : [],
      };
    },
  };
})();
