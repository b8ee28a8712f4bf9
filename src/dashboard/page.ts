/**
 * The dashboard's one page: HTML, inline CSS and inline JS, no build step, nothing fetched but
 * /api/snapshot and /api/events from the same origin (works with no network at all). The script
 * builds the DOM with createElement/textContent only (no innerHTML of data).
 *
 * Test hooks (stable): the graph's hosts `g[data-host][data-state]`, its edges
 * `line[data-from][data-to][data-state]`; the matrix cells `td[data-from][data-to][data-state]`
 * (data-state up | connecting | down) with the RTT as "0.42 ms" or "down"; the hosts table rows
 * `tr[data-host][data-state]` (data-state up | unreachable | silent | revoked); `#updated` holds
 * the snapshot time and `body[data-live]` is "1" while the event stream is open.
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cladnet dashboard</title>
<style>
  :root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --muted:#7a8394; --line:#e3e6ec;
          --private:#2e9e5b; --public:#2f6fdb; --relayed:#d98a1c; --down:#d2453b; --connecting:#b9bec8; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--ink); background:var(--bg); }
  header { display:flex; gap:16px; align-items:baseline; padding:14px 22px; background:#1d2330; color:#fff; }
  header h1 { font-size:18px; margin:0; font-weight:600; }
  header .meta { color:#b8c0cf; font-size:13px; }
  header .live { margin-left:auto; font-size:12px; padding:2px 8px; border-radius:10px; background:#4a5266; }
  body[data-live="1"] header .live { background:var(--private); }
  main { display:grid; grid-template-columns: minmax(340px, 460px) 1fr; gap:18px; padding:18px 22px; align-items:start; }
  section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 16px; }
  section h2 { font-size:13px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted); margin:0 0 10px; }
  .wide { grid-column: 1 / -1; }
  svg { width:100%; height:auto; display:block; }
  svg text { font-size:13px; fill:var(--ink); }
  svg .host circle { fill:#fff; stroke:#1d2330; stroke-width:2; }
  svg .host[data-state="silent"] circle, svg .host[data-state="revoked"] circle { stroke:#c4c8d0; fill:#eef0f3; }
  svg .host[data-state="silent"] text, svg .host[data-state="revoked"] text { fill:#a3a9b5; }
  svg .host[data-state="unreachable"] circle { stroke:var(--down); }
  svg line { stroke-width:3; stroke-linecap:round; }
  svg line.private { stroke:var(--private); } svg line.public { stroke:var(--public); }
  svg line.relayed { stroke:var(--relayed); stroke-dasharray:8 5; }
  svg line.down { stroke:var(--down); stroke-width:1.5; stroke-dasharray:3 5; opacity:.7; }
  svg line.connecting { stroke:var(--connecting); stroke-dasharray:2 4; }
  svg .rtt { font-size:11px; fill:var(--muted); }
  table { border-collapse:collapse; width:100%; }
  th, td { padding:6px 8px; text-align:left; border-bottom:1px solid var(--line); white-space:nowrap; }
  th { font-weight:600; color:var(--muted); font-size:12px; }
  table.matrix td, table.matrix th { text-align:center; }
  table.matrix th.row { text-align:right; }
  table.matrix td { font-variant-numeric: tabular-nums; border:2px solid #fff; border-radius:4px; color:#fff; font-weight:600; }
  table.matrix td.self { background:#f0f1f4; color:#c0c4cc; }
  table.matrix td.private { background:var(--private); } table.matrix td.public { background:var(--public); }
  table.matrix td.relayed { background:var(--relayed); } table.matrix td.down { background:#f6d9d7; color:var(--down); }
  table.matrix td.connecting { background:#eceef2; color:var(--muted); }
  table.matrix td small { display:block; font-weight:400; font-size:10px; opacity:.9; }
  tr.grey td { color:#a3a9b5; }
  .badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; background:#eceef2; color:var(--muted); }
  .badge.up { background:#dff3e7; color:#1f7a45; } .badge.unreachable { background:#f6d9d7; color:var(--down); }
  .legend { display:flex; flex-wrap:wrap; gap:14px; font-size:12px; color:var(--muted); margin-top:8px; }
  .legend span::before { content:""; display:inline-block; width:12px; height:12px; border-radius:3px; margin-right:5px; vertical-align:-2px; background:var(--c); }
  .empty { color:var(--muted); padding:30px; text-align:center; }
  footer { padding:0 22px 18px; color:var(--muted); font-size:12px; }
  @media (max-width: 900px) { main { grid-template-columns: 1fr; } }
</style>
</head>
<body data-live="0">
<header><h1>cladnet</h1><span class="meta" id="network">loading</span><span class="meta" id="updated"></span><span class="live" id="live">offline</span></header>
<main>
  <section><h2>Topology</h2><svg id="graph" viewBox="0 0 440 440" role="img" aria-label="hosts and links"></svg>
    <div class="legend"><span style="--c:var(--private)">direct private</span><span style="--c:var(--public)">direct public</span><span style="--c:var(--relayed)">relayed</span><span style="--c:var(--down)">down</span><span style="--c:var(--connecting)">connecting</span></div>
  </section>
  <section><h2>RTT matrix (row reaches column)</h2><div id="matrix"></div></section>
  <section class="wide"><h2>Hosts</h2><div id="hosts"></div></section>
</main>
<footer id="footer"></footer>
<script>
"use strict";
(function () {
  var SVGNS = "http://www.w3.org/2000/svg";
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function sv(tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function ms(v) { return v === null || v === undefined ? "" : (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + " ms"; }
  function cls(l) { return l.state === "up" ? l.path : l.state; }
  function pathText(l) {
    if (l.state !== "up") return l.state;
    return l.path === "relayed" ? "relayed via " + (l.via || "?") : "direct " + l.path;
  }

  function render(s) {
    document.getElementById("network").textContent = "network " + s.network + (s.etcd.connected ? "" : " (etcd unreachable)");
    document.getElementById("updated").textContent = "updated " + new Date(s.at).toLocaleTimeString();
    document.getElementById("updated").setAttribute("data-at", s.at);
    document.getElementById("footer").textContent = s.hosts.length + " hosts; views skipped as invalid: " + s.counters.invalidViews + ", from non-members: " + s.counters.strayViews;
    var link = {};
    s.links.forEach(function (l) { link[l.from + " " + l.to] = l; });
    renderGraph(s, link);
    renderMatrix(s, link);
    renderHosts(s);
  }

  function renderGraph(s, link) {
    var g = document.getElementById("graph");
    while (g.firstChild) g.removeChild(g.firstChild);
    var n = s.hosts.length, cx = 220, cy = 220, r = n > 1 ? 160 : 0, pos = {};
    s.hosts.forEach(function (h, i) {
      var a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
      pos[h.name] = { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) };
    });
    for (var i = 0; i < n; i++) {
      for (var j = i + 1; j < n; j++) {
        var a = s.hosts[i].name, b = s.hosts[j].name;
        var ab = link[a + " " + b], ba = link[b + " " + a];
        // One line per pair: down if either direction is, else the first direction's path.
        var l = ab.state === "down" || ba.state === "down" ? { state: "down" } : ab.state === "up" ? ab : ba;
        var pa = pos[a], pb = pos[b];
        var line = sv("line", { x1: pa.x, y1: pa.y, x2: pb.x, y2: pb.y, "class": cls(l), "data-from": a, "data-to": b, "data-state": l.state });
        line.appendChild(sv("title", {}, a + " \\u2194 " + b + ": " + pathText(l) + (l.rttMs != null ? ", " + ms(l.rttMs) : "")));
        g.appendChild(line);
        if (l.state === "up" && l.rttMs != null) g.appendChild(sv("text", { x: (pa.x + pb.x) / 2 + 4, y: (pa.y + pb.y) / 2 - 4, "class": "rtt" }, ms(l.rttMs)));
      }
    }
    s.hosts.forEach(function (h) {
      var p = pos[h.name];
      var node = sv("g", { "class": "host", "data-host": h.name, "data-state": h.status });
      node.appendChild(sv("circle", { cx: p.x, cy: p.y, r: 24 }));
      node.appendChild(sv("text", { x: p.x, y: p.y + 4, "text-anchor": "middle" }, h.name));
      node.appendChild(sv("title", {}, h.name + " (" + h.status + ")" + (h.overlayIp ? " " + h.overlayIp : "")));
      g.appendChild(node);
    });
  }

  function renderMatrix(s, link) {
    var box = document.getElementById("matrix");
    while (box.firstChild) box.removeChild(box.firstChild);
    if (s.hosts.length === 0) { box.appendChild(el("div", { "class": "empty" }, "no hosts")); return; }
    var t = el("table", { "class": "matrix" });
    var head = el("tr");
    head.appendChild(el("th", {}, "from \\\\ to"));
    s.hosts.forEach(function (h) { head.appendChild(el("th", { "data-host": h.name }, h.name)); });
    t.appendChild(head);
    s.hosts.forEach(function (from) {
      var tr = el("tr", { "data-row": from.name });
      tr.appendChild(el("th", { "class": "row" }, from.name));
      s.hosts.forEach(function (to) {
        if (from.name === to.name) { tr.appendChild(el("td", { "class": "self" }, "\\u2014")); return; }
        var l = link[from.name + " " + to.name];
        var td = el("td", { "class": cls(l), "data-from": from.name, "data-to": to.name, "data-state": l.state, "data-path": l.path, title: pathText(l) });
        td.appendChild(document.createTextNode(l.state === "up" ? (l.rttMs == null ? "up" : ms(l.rttMs)) : l.state === "down" ? "down" : "\\u2026"));
        if (l.state === "up") td.appendChild(el("small", {}, l.path === "relayed" ? "via " + l.via : l.path));
        tr.appendChild(td);
      });
      t.appendChild(tr);
    });
    box.appendChild(t);
  }

  function renderHosts(s) {
    var box = document.getElementById("hosts");
    while (box.firstChild) box.removeChild(box.firstChild);
    var t = el("table");
    var head = el("tr");
    ["host", "state", "overlay", "reflexive address", "NAT", "relay", "view written"].forEach(function (h) { head.appendChild(el("th", {}, h)); });
    t.appendChild(head);
    var nat = { none: "none (public)", eim: "same mapping for every peer", varies: "mapping varies per peer", unknown: "unknown" };
    s.hosts.forEach(function (h) {
      var tr = el("tr", { "data-host": h.name, "data-state": h.status, "class": h.status === "silent" || h.status === "revoked" ? "grey" : "" });
      tr.appendChild(el("td", {}, h.name));
      var st = el("td"); st.appendChild(el("span", { "class": "badge " + h.status }, h.status)); tr.appendChild(st);
      tr.appendChild(el("td", {}, h.overlayIp || ""));
      tr.appendChild(el("td", { "data-field": "reflexive" }, h.reflexive || "\\u2014"));
      tr.appendChild(el("td", { "data-field": "nat" }, h.nat ? nat[h.nat] || h.nat : "\\u2014"));
      tr.appendChild(el("td", {}, h.relay ? "yes" : ""));
      tr.appendChild(el("td", {}, h.viewAt ? new Date(h.viewAt).toLocaleTimeString() : "\\u2014"));
      t.appendChild(tr);
    });
    box.appendChild(t);
  }

  function connect() {
    var es = new EventSource("/api/events");
    es.addEventListener("open", function () { document.body.setAttribute("data-live", "1"); document.getElementById("live").textContent = "live"; });
    es.addEventListener("error", function () { document.body.setAttribute("data-live", "0"); document.getElementById("live").textContent = "reconnecting"; });
    es.addEventListener("snapshot", function (ev) { render(JSON.parse(ev.data)); });
  }
  fetch("/api/snapshot").then(function (r) { return r.json(); }).then(render).catch(function () {}).then(connect);
})();
</script>
</body>
</html>
`;
