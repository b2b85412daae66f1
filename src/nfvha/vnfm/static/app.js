// nfvha dashboard: reads the manager's event stream (fetch + ReadableStream, since
// EventSource cannot send the bearer token) and redraws the page from a small model.
"use strict";

(() => {
  const TOKEN_KEY = "nfvha.token";
  const STREAM = "/dashboard/v1/stream";
  const SILENCE_MS = 5000;      // no message for this long (ticks come every second): reconnect
  const BACKOFF_MIN = 500, BACKOFF_MAX = 10000;
  const TIMELINE_MAX = 60;

  // A random id per page load: a test can tell the page was never reloaded.
  window.nfvhaPageId = Math.random().toString(36).slice(2);

  const model = {
    hosts: new Map(), vnfs: new Map(), ops: new Map(), hostChanges: new Map(),
    alarms: new Map(), cps: new Map(), cpFailures: [], window: 600, skew: 0,
    snapshots: 0, batches: 0,
    // GET /nfvha/v1/cluster of the member serving this page, from every snapshot and tick.
    cluster: null,
  };
  window.nfvhaModel = model;

  const $ = (id) => document.getElementById(id);
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
    (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const now = () => Date.now() / 1000 + model.skew;   // the manager's wall clock

  // -- token ----------------------------------------------------------------------------

  function readToken() {
    const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      // Keep the token out of the address bar, history and screenshots.
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function askToken(why) {
    setConn("login", why || "a token is needed");
    $("login").hidden = false;
    $("login-error").textContent = why || "";
    $("token").focus();
  }

  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    $("login").hidden = true;
    $("token").value = "";
    connect();
  });

  // -- the stream -------------------------------------------------------------------------

  let backoff = BACKOFF_MIN, controller = null, watchdog = null, retryTimer = null;

  function setConn(state, detail) {
    document.body.dataset.conn = state;
    const el = $("conn");
    el.className = "conn " + state;
    el.textContent = {live: "live", connecting: "connecting…", login: "token needed",
                      disconnected: "disconnected"}[state] || state;
    el.title = detail || "";
    if (detail && state === "disconnected") el.textContent += " — " + detail;
  }

  function armWatchdog() {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => controller && controller.abort(), SILENCE_MS);
  }

  function retry(reason) {
    clearTimeout(watchdog);
    const wait = backoff;
    backoff = Math.min(backoff * 2, BACKOFF_MAX);
    setConn("disconnected", `${reason}; retrying in ${(wait / 1000).toFixed(1)} s`);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, wait);
  }

  async function connect() {
    const token = readToken();
    if (!token) { askToken(); return; }
    if (controller) controller.abort();
    controller = new AbortController();
    const mine = controller;
    if (document.body.dataset.conn !== "disconnected") setConn("connecting");
    let res;
    try {
      res = await fetch(STREAM, {headers: {Authorization: "Bearer " + token,
                                           Accept: "text/event-stream"},
                                 cache: "no-store", signal: mine.signal});
    } catch (e) {
      if (mine === controller) retry("manager unreachable");
      return;
    }
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      askToken("the manager refused this token");
      return;
    }
    if (!res.ok || !res.body) { retry(`HTTP ${res.status}`); return; }
    armWatchdog();
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += decoder.decode(value, {stream: true}).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          armWatchdog();
          onBlock(block);
        }
      }
      if (mine === controller) retry("stream ended");
    } catch (e) {
      if (mine === controller) retry(mine.signal.aborted ? "no news from the manager" : "connection lost");
    }
  }

  function onBlock(block) {
    let event = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data += (data ? "\n" : "") + value;
    }
    if (!data) return;
    const msg = JSON.parse(data);
    if (typeof msg.now === "number") model.skew = msg.now - Date.now() / 1000;
    if (msg.cluster) model.cluster = msg.cluster;
    if (event === "snapshot") {
      applySnapshot(msg);
      backoff = BACKOFF_MIN;
      setConn("live");
    } else if (event === "events") {
      applyEvents(msg.items);
    } else if (event === "tick") {
      for (const h of msg.hosts) model.hosts.set(h.id, {...(model.hosts.get(h.id) || {}), ...h});
    } else if (event === "closing") {
      setConn("disconnected", msg.reason);
    }
    scheduleRender();
  }

  // -- the model --------------------------------------------------------------------------

  function applySnapshot(s) {
    model.snapshots += 1;
    model.window = s.window;
    model.hosts = new Map(s.hosts.map((h) => [h.id, h]));
    model.vnfs = new Map(s.vnfs.map((v) => [v.id, v]));
    model.alarms = new Map(s.alarms.map((a) => [a.id, a]));
    model.ops = new Map();
    model.hostChanges = new Map();
    for (const e of s.timeline) (e.type === "op" ? model.ops : model.hostChanges).set(e.id, e);
    model.cps = new Map(Object.entries(s.checkpoints));
  }

  function applyEvents(items) {
    model.batches += 1;
    for (const it of items) {
      switch (it.kind) {
        case "host":
          model.hosts.set(it.host.id, it.host);
          model.hostChanges.set(it.change.id, it.change);
          break;
        case "host-change": model.hostChanges.set(it.change.id, it.change); break;
        case "vnf": model.vnfs.set(it.vnf.id, it.vnf); break;
        case "vnf-deleted": model.vnfs.delete(it.id); model.cps.delete(it.id); break;
        case "op": model.ops.set(it.op.id, it.op); break;
        case "alarm": model.alarms.set(it.alarm.id, it.alarm); break;
        case "checkpoint": {
          const pts = model.cps.get(it.vnf) || [];
          pts.push(it.point);
          model.cps.set(it.vnf, pts);
          const v = model.vnfs.get(it.vnf);
          if (v) v.lastCheckpoint = it.checkpoint;
          break;
        }
        case "checkpoint-failed":
          model.cpFailures.push(it);
          model.cpFailures.splice(0, model.cpFailures.length - 50);
          break;
      }
    }
    const since = now() - model.window;
    for (const [k, pts] of model.cps) {
      let i = 0;
      while (i < pts.length && pts[i][0] < since) i++;
      if (i) model.cps.set(k, pts.slice(i));
    }
  }

  // -- formatting -------------------------------------------------------------------------

  function fmtAge(s) {
    if (s == null || !isFinite(s)) return "–";
    s = Math.max(0, s);
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return Math.round(s / 3600) + " h";
  }
  function fmtBytes(b) {
    if (b == null) return "–";
    const u = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(1) : b) + " " + u[i];
  }
  function fmtMs(ms) {
    if (ms == null) return "–";
    return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(2) + " s";
  }
  function fmtTime(t) {
    if (!t) return "";
    const d = new Date(t * 1000);
    const p = (n, w = 2) => String(n).padStart(w, "0");
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }

  function hostLabel(h) {
    if (h.state === "DOWN" && h.fenced) return "FENCED";
    return h.state;
  }

  // -- rendering --------------------------------------------------------------------------

  let renderPending = false;
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    setTimeout(() => { renderPending = false; render(); }, 30);
  }

  function render() {
    $("clock").textContent = fmtTime(now());
    renderLeader();
    renderHosts();
    renderVnfs();
    renderCharts();
    renderTimeline();
    renderAlarms();
  }

  // Who leads, and whether the member serving this page does. A follower serves the
  // same data, read from the shared store (refreshed every 2 s); if this member becomes
  // unreachable, the last leader it named is offered as a link.
  function renderLeader() {
    const el = $("leader"), c = model.cluster;
    if (!c) { el.textContent = ""; return; }
    const l = c.leader;
    el.dataset.mode = c.mode;
    el.dataset.member = c.member || "";
    el.dataset.leading = c.leading ? "true" : "false";
    el.dataset.leader = l ? l.member : "";
    el.dataset.term = l ? String(l.term) : "";
    el.classList.toggle("none", !l);
    if (c.mode === "single") {
      el.textContent = "single manager";
      return;
    }
    const role = `<span class="role ${c.leading ? "leads" : ""}">this page: ${esc(c.member)}, ${
      c.leading ? "the leader" : "a follower"}</span>`;
    if (!l) {
      el.innerHTML = `no leader: election under way, writes are refused · ${role}`;
      return;
    }
    let html = `leader <b>${esc(l.member)}</b> · term ${esc(l.term)}${
      l.since ? " · since " + esc(fmtTime(l.since).slice(0, 8)) : ""} · ${role}`;
    if (document.body.dataset.conn === "disconnected" && !c.leading && l.url) {
      html += ` · <a href="${esc(l.url)}/" rel="noreferrer">open the leader's dashboard</a>`;
    }
    el.innerHTML = html;
  }

  function renderHosts() {
    const hosts = [...model.hosts.values()].sort((a, b) => a.id.localeCompare(b.id));
    const count = (st) => hosts.filter((h) => h.state === st).length;
    $("hosts-summary").textContent =
      `${count("UP")} up · ${count("SUSPECTED")} suspected · ${count("DOWN")} down`;
    $("hosts").innerHTML = hosts.map((h) => {
      const label = hostLabel(h);
      const runs = [...model.vnfs.values()].filter((v) => v.host === h.id).map((v) => v.id);
      const backs = [...model.vnfs.values()].filter((v) => (v.backups || []).includes(h.id))
        .map((v) => v.id);
      const fencing = h.state === "DOWN" && !h.fenced && h.fencedInS
        ? ` · fenced in ${h.fencedInS.toFixed(1)} s` : "";
      return `<div class="card host s-${esc(label)}" data-host="${esc(h.id)}"
                   data-state="${esc(h.state)}" data-fenced="${h.fenced ? "true" : "false"}">
        <div class="title"><span class="name">${esc(h.id)}</span>
          <span class="badge s-${esc(label)}">${esc(label)}</span></div>
        <div class="meta">${h.lastHeartbeatAgoMs == null ? "heartbeats go to the leader"
          : `heartbeat ${fmtAge(h.lastHeartbeatAgoMs / 1000)} ago`}${esc(fencing)}</div>
        <div class="meta">runs ${runs.length ? esc(runs.join(", ")) : "nothing"}${
          backs.length ? " · backup for " + esc(backs.join(", ")) : ""}</div>
        <div class="meta dim">${h.memAvailableBytes ? fmtBytes(h.memAvailableBytes) + " free · " : ""}${
          esc(h.url || "")}</div>
      </div>`;
    }).join("") || `<p class="empty">no host has registered yet</p>`;
  }

  function renderVnfs() {
    const vnfs = [...model.vnfs.values()].sort((a, b) => a.id.localeCompare(b.id));
    const active = vnfs.filter((v) => v.state === "ACTIVE").length;
    $("vnfs-summary").textContent = `${active} of ${vnfs.length} active`;
    const t = now();
    $("vnfs").tBodies[0].innerHTML = vnfs.map((v) => {
      const cp = v.lastCheckpoint;
      const age = cp && cp.createdAt ? t - cp.createdAt : null;
      const late = age != null && v.checkpointInterval && age > 3 * v.checkpointInterval + 1;
      const rec = v.lastRecovery;
      return `<tr data-vnf="${esc(v.id)}" data-state="${esc(v.state)}" data-host="${esc(v.host || "")}"
                  data-checkpoint-host="${esc(cp ? cp.host : "")}">
        <td><span class="name">${esc(v.id)}</span><div class="dim">${esc(v.address || "")}${
          v.replay ? " · replay" : ""}</div></td>
        <td><span class="badge s-${esc(v.state)}">${esc(v.state)}</span></td>
        <td class="host-cell">${esc(v.host || "–")}</td>
        <td>${esc((v.backups || []).join(", ") || "–")}</td>
        <td>${esc(v.generation)}</td>
        <td class="${late ? "late" : ""}">${cp ? `#${esc(cp.seq)}, ${fmtAge(age)} ago` : "–"}</td>
        <td>${cp ? fmtBytes(cp.bytes) : "–"}</td>
        <td>${cp ? fmtMs(cp.durationMs) : "–"}</td>
        <td>${rec ? `${esc(rec.strategy)} from ${esc(rec.fromHost || "?")}` : "–"}</td>
      </tr>`;
    }).join("") || `<tr><td colspan="9" class="empty">no VNF instance</td></tr>`;
  }

  // Intervals when a VNF did not serve: from detection to serving again, per heal.
  function outages(vnfId, t) {
    const v = model.vnfs.get(vnfId);
    const out = [];
    for (const op of model.ops.values()) {
      if (op.vnf !== vnfId || op.operation !== "HEAL") continue;
      const from = (op.timestamps && op.timestamps.detected) || op.at;
      if (!from) continue;
      let to = op.timestamps && op.timestamps.serving;
      if (!to) to = (op.state === "COMPLETED" || (v && v.state === "ACTIVE")) ? from : t;
      out.push([from, to]);
    }
    return out;
  }

  // The charts span what is known, from one minute up to the whole kept window.
  function chartSpan(t) {
    let first = t;
    for (const v of model.vnfs.values()) if (v.createdAt) first = Math.min(first, v.createdAt);
    for (const pts of model.cps.values()) if (pts.length) first = Math.min(first, pts[0][0]);
    return Math.min(model.window, Math.max(60, t - first + 5));
  }

  function tickLabel(s) {
    return s === 0 ? "now" : s < 60 ? `-${s} s` : `-${s / 60} min`;
  }

  function renderCharts() {
    const t = now(), W = 800, H = 112, win = chartSpan(t), x0 = t - win;
    const step = [10, 15, 30, 60, 120, 300].find((s) => win / s <= 6) || 600;
    $("charts-span").textContent = "last " + (win < 120 ? `${Math.round(win)} s`
      : `${Math.round(win / 60)} min`);
    const left = 44, right = W - 6, strip = [4, 18], plot = [30, 96];
    const X = (ts) => left + (Math.max(x0, Math.min(t, ts)) - x0) / win * (right - left);
    const vnfs = [...model.vnfs.values()].filter((v) => v.state !== "NOT_INSTANTIATED")
      .sort((a, b) => a.id.localeCompare(b.id));
    $("charts").innerHTML = vnfs.map((v) => {
      const start = Math.max(x0, v.createdAt || x0);
      const outs = outages(v.id, t).filter(([a, b]) => b >= x0);
      const down = outs.reduce((s, [a, b]) => s + Math.max(0, Math.min(b, t) - Math.max(a, start)), 0);
      const span = Math.max(1e-3, t - start);
      const avail = 100 * Math.max(0, 1 - down / span);
      const pts = (model.cps.get(v.id) || []).filter((p) => p[0] >= x0);
      const gaps = [];
      for (let i = 1; i < pts.length; i++) gaps.push([pts[i][0], pts[i][0] - pts[i - 1][0]]);
      const target = v.checkpointInterval || 1;
      const ymax = Math.max(2 * target, ...gaps.map((g) => g[1] * 1.1));
      const Y = (s) => plot[1] - Math.min(s, ymax) / ymax * (plot[1] - plot[0]);
      const meanGap = gaps.length ? gaps.reduce((s, g) => s + g[1], 0) / gaps.length : null;
      const last = pts.length ? pts[pts.length - 1] : null;
      let svg = `<rect class="unknown" x="${left}" y="${strip[0]}" width="${right - left}" height="${strip[1] - strip[0]}"/>`;
      svg += `<rect class="up" x="${X(start)}" y="${strip[0]}" width="${X(t) - X(start)}" height="${strip[1] - strip[0]}"/>`;
      for (const [a, b] of outs) {
        const w = Math.max(1.5, X(b) - X(a));
        svg += `<rect class="down" x="${X(a)}" y="${strip[0]}" width="${w}" height="${strip[1] - strip[0]}"><title>down ${fmtMs((Math.min(b, t) - a) * 1000)} from ${fmtTime(a)}</title></rect>`;
        svg += `<rect class="down-band" x="${X(a)}" y="${plot[0]}" width="${w}" height="${plot[1] - plot[0]}"/>`;
      }
      svg += `<line class="axis" x1="${left}" x2="${right}" y1="${plot[1]}" y2="${plot[1]}"/>`;
      svg += `<line class="target" x1="${left}" x2="${right}" y1="${Y(target)}" y2="${Y(target)}"/>`;
      svg += `<text class="lbl" x="${left - 4}" y="${Y(target) + 3}" text-anchor="end">${target}s</text>`;
      svg += `<text class="lbl" x="${left - 4}" y="${plot[0] + 4}" text-anchor="end">${ymax.toFixed(1)}s</text>`;
      svg += `<text class="lbl" x="${left - 4}" y="${strip[1] - 3}" text-anchor="end">up</text>`;
      if (gaps.length) {
        svg += `<polyline class="cadence" points="${gaps.map((g) => `${X(g[0]).toFixed(1)},${Y(g[1]).toFixed(1)}`).join(" ")}"/>`;
      }
      for (const p of pts) svg += `<line class="cp" x1="${X(p[0]).toFixed(1)}" x2="${X(p[0]).toFixed(1)}" y1="${plot[1]}" y2="${plot[1] + 4}"/>`;
      for (let m = 0; m <= win - step / 2; m += step) {
        svg += `<text class="lbl" x="${X(t - m)}" y="${H - 2}" text-anchor="${m === 0 ? "end" : "middle"}">${tickLabel(m)}</text>`;
      }
      return `<figure class="chart" data-vnf="${esc(v.id)}" data-checkpoints="${pts.length}">
        <figcaption><span class="name">${esc(v.id)}</span>
          <span class="avail ${avail < 99.9 ? "degraded" : ""}">${avail.toFixed(2)} % available</span>
          · ${outs.length} outage${outs.length === 1 ? "" : "s"} (${fmtMs(down * 1000)})
          · checkpoints every ${meanGap ? meanGap.toFixed(2) + " s" : "–"} (target ${esc(target)} s)
          ${last ? `· last ${fmtBytes(last[1])} in ${fmtMs(last[2])}` : ""}</figcaption>
        <svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img"
             aria-label="availability and checkpoint interval of ${esc(v.id)}">${svg}</svg>
      </figure>`;
    }).join("") || `<p class="empty">no instantiated VNF</p>`;
  }

  function phaseBar(op) {
    const p = op.phases || {};
    const total = p.totalMs;
    if (!total) return "";
    const seg = (cls, ms, label) => ms > 0
      ? `<span class="seg ${cls}" style="flex-grow:${ms.toFixed(1)}" title="${label} ${fmtMs(ms)}">${label} ${fmtMs(ms)}</span>` : "";
    return `<div class="phases">${seg("decide", p.decideMs, "decide")}${
      seg("restore", p.restoreMs, "restore")}${seg("redirect", p.redirectMs, "redirect")}</div>`;
  }

  function renderTimeline() {
    const t = now();
    const entries = [...model.hostChanges.values(), ...model.ops.values(),
                     ...model.cpFailures.map((f) => ({...f, type: "cpfail"}))]
      .filter((e) => e.at).sort((a, b) => b.at - a.at).slice(0, TIMELINE_MAX);
    $("timeline").innerHTML = entries.map((e) => {
      if (e.type === "host") {
        const label = e.state === "UP" && !e.previous ? "registered" : `${e.previous || "?"} → ${e.state}`;
        return `<li class="ev host s-${esc(e.state)}" data-kind="host" data-host="${esc(e.host)}" data-state="${esc(e.state)}">
          <time>${fmtTime(e.at)}</time><span class="what">host <b>${esc(e.host)}</b> ${esc(label)}</span>
          <div class="dim">${esc(e.reason)}</div></li>`;
      }
      if (e.type === "cpfail") {
        return `<li class="ev cpfail" data-kind="checkpoint-failed" data-vnf="${esc(e.vnf)}">
          <time>${fmtTime(e.at)}</time><span class="what">checkpoint of <b>${esc(e.vnf)}</b> on ${esc(e.host)} failed</span>
          <div class="dim">${esc(e.detail)}</div></li>`;
      }
      const running = e.state === "STARTING" || e.state === "PROCESSING";
      if (e.operation === "HEAL") {
        const how = e.strategy ? ` → ${esc(e.strategy)} on <b>${esc(e.targetHost)}</b>` : "";
        const took = e.phases && e.phases.totalMs ? ` in ${fmtMs(e.phases.totalMs)}`
          : running ? ` (${fmtAge(t - e.at)} so far)` : "";
        return `<li class="ev op heal s-${esc(e.state)}" data-kind="op" data-operation="HEAL"
                    data-vnf="${esc(e.vnf)}" data-state="${esc(e.state)}" data-target="${esc(e.targetHost || "")}">
          <time>${fmtTime(e.at)}</time><span class="what"><b>${esc(e.vnf)}</b>: ${esc(e.failureType || "heal")}${how}
          <span class="badge s-${esc(e.state)}">${esc(e.state)}</span>${took}</span>
          <div class="dim">${esc(e.detail || "")}${e.auto ? "" : " (requested)"}${e.error ? " — " + esc(e.error) : ""}</div>
          ${phaseBar(e)}</li>`;
      }
      return `<li class="ev op minor s-${esc(e.state)}" data-kind="op" data-operation="${esc(e.operation)}"
                  data-vnf="${esc(e.vnf)}" data-state="${esc(e.state)}">
        <time>${fmtTime(e.at)}</time><span class="what"><b>${esc(e.vnf)}</b> ${esc((e.operation || "").toLowerCase())}
        <span class="badge s-${esc(e.state)}">${esc(e.state)}</span></span>
        ${e.error ? `<div class="dim">${esc(e.error)}</div>` : ""}</li>`;
    }).join("") || `<li class="empty">nothing happened yet</li>`;
  }

  function renderAlarms() {
    const all = [...model.alarms.values()];
    const active = all.filter((a) => !a.clearedAt).sort((a, b) => b.raisedAt - a.raisedAt);
    const cleared = all.filter((a) => a.clearedAt).sort((a, b) => b.clearedAt - a.clearedAt).slice(0, 15);
    $("alarms-summary").textContent = `${active.length} active`;
    const li = (a) => `<li class="alarm ${a.clearedAt ? "cleared" : "active"} sev-${esc(a.severity)}"
        data-alarm="${esc(a.id)}" data-active="${a.clearedAt ? "false" : "true"}">
      <span class="badge sev-${esc(a.severity)}">${esc(a.severity)}</span>
      <b>${esc(a.faultType)}</b> on ${esc(a.object)} <time>${fmtTime(a.raisedAt)}</time>
      ${a.clearedAt ? `<span class="dim">cleared after ${fmtAge(a.clearedAt - a.raisedAt)}</span>` : ""}
      <div class="dim">${esc(a.detail)}</div></li>`;
    $("alarms").innerHTML = active.map(li).join("") + cleared.map(li).join("")
      || `<li class="empty">no alarm</li>`;
  }

  // Ages move even when nothing happens (ticks also redraw; this covers a stalled stream).
  setInterval(scheduleRender, 1000);
  connect();
})();
