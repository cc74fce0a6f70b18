/* qgraph report explorer: draws the graph of a qgraph report (layered layout, collapsible by module
   path), colours nodes by error, shows quantizer state on click. Plain JS, no dependencies; reads the
   JSON in <script id="qgraph-data">. Written for qgraph (Apache-2.0). */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("qgraph-data").textContent);
  var G = D.graph || { nodes: [], edges: [] };
  var SVGNS = "http://www.w3.org/2000/svg";
  var LIMIT = 160; // nodes drawn before module groups start out collapsed
  var W = 170, H = 36, QH = 24, XGAP = 30, YGAP = 34;
  var layers = {}, byId = {}, groups = {};
  (D.layers || []).forEach(function (l) { layers[l.node] = l; });
  G.nodes.forEach(function (n) { byId[n.id] = n; });
  var state = { view: "after", metric: "cumulative", collapsed: {}, weights: false, variant: {}, selected: null, zoom: null };

  function prefixes(path) {
    if (!path) return [];
    var parts = path.split("."), out = [];
    for (var i = 1; i <= parts.length; i++) out.push(parts.slice(0, i).join("."));
    return out;
  }
  G.nodes.forEach(function (n) {
    prefixes(n.module).forEach(function (p) {
      var g = groups[p] || (groups[p] = { path: p, depth: p.split(".").length, count: 0 });
      g.count++;
    });
  });
  var groupList = Object.keys(groups).map(function (k) { return groups[k]; }).filter(function (g) { return g.count > 1; });
  groupList.sort(function (a, b) { return a.path < b.path ? -1 : a.path > b.path ? 1 : 0; });

  function el(tag, attrs, parent, text) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function h(tag, attrs, parent, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function num(v, digits) {
    if (v === null || v === undefined) return "-";
    if (v === "inf" || v === "-inf") return v;
    if (typeof v !== "number") return String(v);
    return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(digits || 3) : v.toPrecision(digits || 4);
  }
  function db(v) { return v === null || v === undefined ? "-" : (typeof v === "number" ? v.toFixed(1) : String(v)) + " dB"; }

  // ---------------------------------------------------------------- metrics and colour
  function layerView(l) {
    for (var sw in state.variant) {
      var val = state.variant[sw];
      if (val && l.variants && l.variants[sw] && l.variants[sw][val]) return Object.assign({}, l, l.variants[sw][val]);
    }
    return l;
  }
  function sqnrOf(layerName) {
    var l = layers[layerName];
    if (!l) return null;
    var m = layerView(l)[state.metric];
    if (!m) return null;
    var v = m.sqnr_db;
    return v === "inf" ? 200 : v === "-inf" ? -200 : v;
  }
  function colour(s) {
    if (s === null || s === undefined) return "#eceff3";
    var t = Math.max(0, Math.min(1, s / 40));
    return "hsl(" + Math.round(t * 120) + ",70%,72%)";
  }

  // ---------------------------------------------------------------- what is visible
  function inView(n) {
    if (!state.weights && n.op === "get_attr") return false;
    if (state.view === "after") return n.status !== "removed";
    if (state.view === "before") return n.status !== "added";
    return true;
  }
  function edgeInView(e) {
    if (state.view === "after") return e[2] !== "before";
    if (state.view === "before") return e[2] !== "after";
    return true;
  }
  function repKey(n) {
    var ps = prefixes(n.module);
    for (var i = 0; i < ps.length; i++) if (state.collapsed[ps[i]] && groups[ps[i]].count > 1) return "group:" + ps[i];
    return n.id;
  }
  function visibleCount() {
    var keys = {};
    G.nodes.forEach(function (n) { if (inView(n)) keys[repKey(n)] = 1; });
    return Object.keys(keys).length;
  }
  function autoCollapse() {
    state.collapsed = {};
    if (visibleCount() <= LIMIT) return;
    groupList.forEach(function (g) { if (g.depth === 1) state.collapsed[g.path] = true; });
    var maxDepth = groupList.reduce(function (m, g) { return Math.max(m, g.depth); }, 0);
    // one level of detail everywhere: open whole depths while the drawing stays under LIMIT
    for (var d = 1; d <= maxDepth; d++) {
      var saved = Object.assign({}, state.collapsed);
      groupList.forEach(function (g) {
        if (g.depth === d) delete state.collapsed[g.path];
        if (g.depth === d + 1) state.collapsed[g.path] = true;
      });
      if (visibleCount() > LIMIT) { state.collapsed = saved; break; }
    }
  }

  // ---------------------------------------------------------------- layered layout
  function buildItems() {
    var items = {}, list = [];
    G.nodes.forEach(function (n) {
      if (!inView(n)) return;
      var k = repKey(n), it = items[k];
      if (!it) {
        it = items[k] = { key: k, group: k.indexOf("group:") === 0 ? groups[k.slice(6)] : null, node: k.indexOf("group:") === 0 ? null : n,
                          order: n.order, members: [], preds: [], succs: [] };
        list.push(it);
      }
      it.members.push(n);
      it.order = Math.min(it.order, n.order);
    });
    var seen = {}, edges = [];
    G.edges.forEach(function (e) {
      if (!edgeInView(e) || !byId[e[0]] || !byId[e[1]] || !inView(byId[e[0]]) || !inView(byId[e[1]])) return;
      var a = items[repKey(byId[e[0]])], b = items[repKey(byId[e[1]])];
      if (a === b || seen[a.key + "\u0000" + b.key]) return;
      seen[a.key + "\u0000" + b.key] = 1;
      var ed = { a: a, b: b, where: e[2] };
      edges.push(ed);
      a.succs.push(b);
      b.preds.push(a);
    });
    return { list: list, edges: edges };
  }
  function layout(g) {
    var list = g.list.slice().sort(function (x, y) { return x.order - y.order; });
    list.forEach(function (it) {
      it.layer = 0;
      it.preds.forEach(function (p) { if (p.order < it.order) it.layer = Math.max(it.layer, p.layer + 1); });
    });
    // sources (weights, their quantizers) sit just above their first consumer, not all in the top row
    list.slice().reverse().forEach(function (it) {
      if (it.preds.some(function (p) { return p.order < it.order; })) return;
      var m = Infinity;
      it.succs.forEach(function (s) { if (s.order > it.order) m = Math.min(m, s.layer); });
      if (m !== Infinity && m > 0) it.layer = m - 1;
    });
    var rows = [];
    list.forEach(function (it) { (rows[it.layer] = rows[it.layer] || []).push(it); });
    rows.forEach(function (r) { r.forEach(function (it, i) { it.pos = i; }); });
    function sweep(down) {
      var order = down ? rows : rows.slice().reverse();
      order.forEach(function (r) {
        r.forEach(function (it) {
          var nb = down ? it.preds : it.succs, s = 0, c = 0;
          nb.forEach(function (o) { if (o.layer !== it.layer) { s += o.pos; c++; } });
          it.bary = c ? s / c : it.pos;
        });
        r.sort(function (x, y) { return x.bary - y.bary || x.order - y.order; });
        r.forEach(function (it, i) { it.pos = i; });
      });
    }
    for (var i = 0; i < 4; i++) { sweep(true); sweep(false); }
    // x: place each row centred on its neighbours' mean, keeping order and spacing
    rows.forEach(function (r, li) {
      var want = r.map(function (it) {
        var s = 0, c = 0;
        it.preds.forEach(function (p) { if (p.layer < li && p.x !== undefined) { s += p.x; c++; } });
        return c ? s / c : (it.pos - (r.length - 1) / 2) * (W + XGAP);
      });
      var x = -Infinity;
      r.forEach(function (it, i) { x = Math.max(want[i], x + W + XGAP); it.x = x; });
      var shift = (want.reduce(function (a, b) { return a + b; }, 0) - r.reduce(function (a, it) { return a + it.x; }, 0)) / r.length;
      r.forEach(function (it) { it.x += shift; });
    });
    var y = 0;
    rows.forEach(function (r) {
      var hh = r.some(function (it) { return it.group || !isQuantizer(it.node); }) ? H : QH;
      r.forEach(function (it) { it.y = y; it.h = (it.group || !isQuantizer(it.node)) ? H : QH; });
      y += hh + YGAP;
    });
    return rows;
  }
  function isQuantizer(n) { return n && !!n.quantizer; }

  // ---------------------------------------------------------------- drawing
  var svg = document.getElementById("graph"), vp;
  function itemColour(it) {
    if (it.group) {
      var worst = null;
      it.members.forEach(function (n) {
        if (n.layer && layers[n.layer] && layers[n.layer].node === n.id) {
          var s = sqnrOf(n.layer);
          if (s !== null && (worst === null || s < worst)) worst = s;
        }
      });
      return colour(worst);
    }
    var n = it.node;
    if (n.layer && (n.id === n.layer || isQuantizer(n))) return colour(sqnrOf(n.layer));
    return colour(null);
  }
  function label(it) {
    if (it.group) return ["\u25B8 " + it.group.path, it.members.length + " nodes"];
    var n = it.node;
    var first = isQuantizer(n) ? "Q " + (D.quantizers[n.quantizer] ? D.quantizers[n.quantizer].spec : n.target) : n.target;
    var second = n.module || n.op;
    if (state.view === "diff" && n.passes && n.passes.length) second = n.passes[0];
    else if (n.layer === n.id && layers[n.id]) second = (n.module || n.id) + "  " + db(sqnrOf(n.id)).replace(" dB", "dB");
    return isQuantizer(n) ? [first] : [first, second];
  }
  function clip(s, w) { var max = Math.floor(w / 6.2); return s.length > max ? s.slice(0, max - 1) + "\u2026" : s; }
  function render() {
    var g = buildItems(), rows = layout(g);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var defs = el("defs", {}, svg);
    var mk = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, defs);
    el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#7a8494" }, mk);
    vp = el("g", { id: "viewport" }, svg);
    var eg = el("g", { class: "edges" }, vp), ng = el("g", { class: "nodes" }, vp);
    g.edges.forEach(function (e) {
      var x1 = e.a.x + W / 2, y1 = e.a.y + e.a.h, x2 = e.b.x + W / 2, y2 = e.b.y, dy = Math.max(20, (y2 - y1) / 2);
      var d = y2 > y1 ? "M" + x1 + "," + y1 + " C" + x1 + "," + (y1 + dy) + " " + x2 + "," + (y2 - dy) + " " + x2 + "," + y2
                      : "M" + x1 + "," + y1 + " C" + (x1 + 120) + "," + (y1 + 80) + " " + (x2 + 120) + "," + (y2 - 80) + " " + x2 + "," + y2;
      el("path", { d: d, class: "edge edge-" + (state.view === "diff" ? e.where : "both"), "marker-end": "url(#arrow)" }, eg);
    });
    state.items = {};
    g.list.forEach(function (it) {
      state.items[it.key] = it;
      var n = it.node, cls = "node" + (it.group ? " group" : "") + (isQuantizer(n) ? " quantizer" : "");
      if (n && state.view === "diff") cls += " status-" + n.status;
      if (n && state.selected === n.id) cls += " selected";
      var ge = el("g", { class: cls, transform: "translate(" + it.x + "," + it.y + ")", "data-id": it.group ? "group:" + it.group.path : n.id }, ng);
      el("rect", { width: W, height: it.h, rx: isQuantizer(n) ? 11 : 5, fill: itemColour(it) }, ge);
      var lines = label(it);
      lines.forEach(function (t, i) {
        el("text", { x: 8, y: lines.length === 1 ? it.h / 2 + 4 : 15 + i * 14, class: i ? "sub" : "main" }, ge, clip(t, W - 12));
      });
      el("title", {}, ge, it.group ? it.group.path + " (" + it.members.length + " nodes): click to expand" : n.id + " (" + n.op + " " + n.target + ")");
      ge.addEventListener("click", function (ev) {
        ev.stopPropagation();
        if (it.group) { delete state.collapsed[it.group.path]; redraw(); return; }
        select(n.id);
      });
    });
    fit(rows);
    document.getElementById("count").textContent = g.list.length + " shown of " + G.nodes.filter(inView).length + " nodes";
    drawTree();
  }
  function fit(rows) {
    var b = vp.getBBox(), box = svg.getBoundingClientRect();
    var s = Math.min(1.2, Math.max(0.15, (box.width - 20) / Math.max(1, b.width)));
    if (!state.zoom) state.zoom = { s: s, x: 10 - b.x * s + Math.max(0, (box.width - 20 - b.width * s) / 2), y: 10 - b.y * s };
    apply();
  }
  function reveal(id) {
    // expand the groups around a node, redraw, centre the view on it and show its details
    var n = byId[id];
    if (!n) return false;
    prefixes(n.module).forEach(function (p) { delete state.collapsed[p]; });
    if (!inView(n)) { state.view = "diff"; document.getElementById("view").value = "diff"; }
    redraw();
    var it = state.items[repKey(n)], box = svg.getBoundingClientRect();
    if (it) {
      state.zoom.s = Math.max(state.zoom.s, 0.8);
      state.zoom.x = box.width / 2 - (it.x + W / 2) * state.zoom.s;
      state.zoom.y = box.height / 2 - (it.y + it.h / 2) * state.zoom.s;
      apply();
    }
    select(id);
    return true;
  }
  function find(text) {
    text = text.trim();
    if (!text) return false;
    var hit = byId[text] || G.nodes.filter(function (n) { return n.module === text && n.layer === n.id; })[0]
      || G.nodes.filter(function (n) { return n.module === text; })[0]
      || G.nodes.filter(function (n) { return n.id.indexOf(text) >= 0 || n.module.indexOf(text) >= 0; })[0];
    return hit ? reveal(hit.id) : false;
  }
  function apply() { vp.setAttribute("transform", "translate(" + state.zoom.x + "," + state.zoom.y + ") scale(" + state.zoom.s + ")"); }
  function redraw() { state.zoom = null; render(); }
  (function panZoom() {
    var drag = null;
    svg.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var r = svg.getBoundingClientRect(), mx = ev.clientX - r.left, my = ev.clientY - r.top, z = state.zoom;
      var f = Math.exp(-ev.deltaY * 0.0015), s = Math.max(0.05, Math.min(4, z.s * f));
      z.x = mx - (mx - z.x) * s / z.s; z.y = my - (my - z.y) * s / z.s; z.s = s;
      apply();
    }, { passive: false });
    svg.addEventListener("mousedown", function (ev) { drag = { x: ev.clientX, y: ev.clientY, zx: state.zoom.x, zy: state.zoom.y }; });
    window.addEventListener("mousemove", function (ev) {
      if (!drag) return;
      state.zoom.x = drag.zx + ev.clientX - drag.x; state.zoom.y = drag.zy + ev.clientY - drag.y; apply();
    });
    window.addEventListener("mouseup", function () { drag = null; });
  })();

  // ---------------------------------------------------------------- module tree
  function drawTree() {
    var box = document.getElementById("tree");
    box.textContent = "";
    groupList.forEach(function (g) {
      var hidden = prefixes(g.path).slice(0, -1).some(function (p) { return state.collapsed[p]; });
      if (hidden) return;
      var row = h("div", { class: "tree-row", style: "padding-left:" + (g.depth - 1) * 12 + "px", "data-path": g.path }, box);
      var open = !state.collapsed[g.path];
      h("span", { class: "twisty" }, row, open ? "\u25BE " : "\u25B8 ");
      h("span", {}, row, g.path.split(".").pop() + " ");
      h("span", { class: "muted" }, row, "(" + g.count + ")");
      row.addEventListener("click", function () {
        if (open) state.collapsed[g.path] = true; else delete state.collapsed[g.path];
        redraw();
      });
    });
  }

  // ---------------------------------------------------------------- details
  function kv(table, k, v) {
    var tr = h("tr", {}, table);
    h("th", {}, tr, k);
    h("td", {}, tr, v);
  }
  function histogram(q, parent) {
    var hist = q.hist, w = 320, hh = 110, pad = 4;
    if (!hist) return;
    var s = el("svg", { width: w, height: hh + 18, class: "hist" }, parent);
    var max = Math.max.apply(null, hist.counts.concat([1])), bw = (w - 2 * pad) / hist.counts.length;
    function X(v) { return pad + (v - hist.lo) / (hist.hi - hist.lo) * (w - 2 * pad); }
    hist.counts.forEach(function (c, i) {
      var bh = c ? Math.max(1, Math.sqrt(c / max) * hh) : 0;
      el("rect", { x: pad + i * bw, y: hh - bh, width: Math.max(0.5, bw - 0.5), height: bh, class: "bar" }, s);
    });
    if (q.grid) {
      var levels = q.qmax - q.qmin + 1, every = levels > 64 ? Math.ceil(levels / 32) : 1;
      for (var k = q.qmin; k <= q.qmax; k++) {
        var edge = k === q.qmin || k === q.qmax;
        if (!edge && (k - q.qmin) % every) continue;
        var v = q.grid.scale * (k - q.grid.zero_point);
        if (v < hist.lo || v > hist.hi) continue;
        el("line", { x1: X(v), x2: X(v), y1: 0, y2: hh, class: edge ? "grid edge" : "grid" }, s);
      }
    }
    el("text", { x: pad, y: hh + 14, class: "axis" }, s, num(hist.lo, 3));
    el("text", { x: w - pad, y: hh + 14, class: "axis", "text-anchor": "end" }, s, num(hist.hi, 3));
    h("div", { class: "muted" }, parent, "histogram (sqrt counts) of " + hist.of + (q.grid ? "; red: quantization grid" + (q.qmax - q.qmin + 1 > 64 ? " (every " + Math.ceil((q.qmax - q.qmin + 1) / 32) + "th level and the bounds)" : "") : ""));
  }
  function quantizerBox(name, parent) {
    var q = D.quantizers[name];
    if (!q) return;
    var box = h("div", { class: "qbox" }, parent);
    h("h4", {}, box, name);
    var t = h("table", {}, box);
    kv(t, "role", q.role);
    kv(t, "spec", q.spec + " (" + q.bits + " bits, levels " + q.qmin + ".." + q.qmax + ")");
    kv(t, "mode", q.mode);
    if (q.scale) kv(t, "scale", q.scale.count === 1 ? num(q.scale.min) : q.scale.count + " values, " + num(q.scale.min) + " .. " + num(q.scale.max));
    if (q.zero_point) kv(t, "zero point", q.zero_point.count === 1 ? num(q.zero_point.min) : q.zero_point.count + " values, " + num(q.zero_point.min) + " .. " + num(q.zero_point.max));
    if (q.clipped !== undefined) kv(t, "clipped", (100 * q.clipped).toFixed(2) + "% of values");
    if (q.sparsity !== undefined) kv(t, "sparsity", (100 * q.sparsity).toFixed(1) + "% zeros");
    var extra = q.extra || {};
    Object.keys(extra).forEach(function (k) { kv(t, k, typeof extra[k] === "object" ? JSON.stringify(extra[k]) : String(extra[k])); });
    if (q.scale && q.scale.count > 1) {
      var det = h("details", {}, box);
      h("summary", {}, det, "scales and zero points");
      h("div", { class: "mono" }, det, "scale: " + q.scale.values.map(function (v) { return num(v, 3); }).join(", ") + (q.scale.count > q.scale.values.length ? ", \u2026" : ""));
      if (q.zero_point) h("div", { class: "mono" }, det, "zero point: " + q.zero_point.values.join(", ") + (q.zero_point.count > q.zero_point.values.length ? ", \u2026" : ""));
    }
    histogram(q, box);
  }
  function select(id) {
    state.selected = id;
    var n = byId[id], box = document.getElementById("details");
    box.textContent = "";
    Array.prototype.forEach.call(svg.querySelectorAll(".node"), function (e) { e.classList.toggle("selected", e.getAttribute("data-id") === id); });
    if (!n) return;
    h("h3", {}, box, n.id);
    var t = h("table", {}, box);
    kv(t, "op", n.op + " " + n.target);
    kv(t, "module", n.module || "(root)");
    if (n.shape) kv(t, "shape", "[" + n.shape.join(", ") + "]");
    kv(t, "status", { same: "unchanged by the passes", added: "inserted", removed: "removed (before only)", changed: "changed" }[n.status] || n.status);
    if (n.passes && n.passes.length) kv(t, "passes", n.passes.join("; "));
    var ch = (D.changes || []).filter(function (c) { return c.node === n.id || c.node.replace(/\./g, "_") === n.id; });
    if (ch.length) {
      h("h4", {}, box, "changes");
      var ul = h("ul", {}, box);
      ch.forEach(function (c) { h("li", {}, ul, "[" + c.pass + "] " + c.action + (c.detail ? ": " + c.detail : "")); });
    }
    var l = n.layer && layers[n.layer];
    if (l) {
      var lv = layerView(l);
      h("h4", {}, box, "layer " + (l.module || l.node) + (l.node !== n.id ? " (via " + l.node + ")" : ""));
      var lt = h("table", {}, box);
      kv(lt, "bits", lv.bits + "  (weight " + l.weight_desc + ", activation " + l.activation_desc + ")");
      ["cumulative", "local", "output_alone"].forEach(function (k) {
        var m = lv[k];
        kv(lt, { cumulative: "error, everything quantized", local: "error, only this layer quantized", output_alone: "model output, only this layer" }[k],
           m ? "SQNR " + db(m.sqnr_db) + ", cosine " + num(m.cosine, 5) + ", max |err| " + num(m.max_abs_error, 3) : "-");
      });
      if (l.rank) kv(lt, "sensitivity rank", l.rank + " of " + D.ranking.length);
      if (lv.weight_sqnr_db !== null && lv.weight_sqnr_db !== undefined) kv(lt, "weight SQNR", db(lv.weight_sqnr_db));
      if (l.weight_range) kv(lt, "weight range", num(l.weight_range[0]) + " .. " + num(l.weight_range[1]));
      if (l.activation_range) kv(lt, "activation range (float)", num(l.activation_range[0]) + " .. " + num(l.activation_range[1]));
      if (l.activation_grid) kv(lt, "activation grid", num(l.activation_grid[0]) + " .. " + num(l.activation_grid[1]));
      if (l.sparsity) kv(lt, "weight sparsity", (100 * l.sparsity).toFixed(1) + "%");
      (isQuantizer(n) ? [n.quantizer] : l.quantizers).forEach(function (qn) { quantizerBox(qn, box); });
    } else if (isQuantizer(n)) {
      quantizerBox(n.quantizer, box);
    }
  }

  // ---------------------------------------------------------------- controls
  function control(id, fn) { var e = document.getElementById(id); if (e) e.addEventListener("change", function () { fn(e); }); }
  control("view", function (e) { state.view = e.value; redraw(); });
  control("metric", function (e) { state.metric = e.value; render(); if (state.selected) select(state.selected); });
  control("weights", function (e) { state.weights = e.checked; autoCollapse(); redraw(); });
  document.getElementById("expand").addEventListener("click", function () { state.collapsed = {}; redraw(); });
  document.getElementById("collapse").addEventListener("click", function () { autoCollapse(); redraw(); });
  var sw = document.getElementById("switches");
  Object.keys(D.switches || {}).forEach(function (name) {
    var lab = h("label", {}, sw, " " + name + " ");
    var s = h("select", { "data-switch": name }, lab);
    h("option", { value: "" }, s, "as built");
    D.switches[name].forEach(function (v) { h("option", { value: v }, s, v); });
    s.addEventListener("change", function () { state.variant[name] = s.value; render(); if (state.selected) select(state.selected); });
  });
  Array.prototype.forEach.call(document.querySelectorAll("[data-select]"), function (e) {
    e.addEventListener("click", function () { reveal(e.getAttribute("data-select")); });
  });
  var search = document.getElementById("search");
  search.addEventListener("keydown", function (ev) {
    if (ev.key !== "Enter") return;
    search.classList.toggle("notfound", !find(search.value));
  });

  autoCollapse();
  render();
  document.body.setAttribute("data-ready", "1");
})();
