/* sae-kit dashboard: the code every page shares. Local only: no fetch, no XHR, no CDN. Data files
   are scripts calling saeKitRegister(kind, key, payload); pages add them as <script> tags (file://
   allows those). Text always goes through textContent, never innerHTML, so token text cannot
   inject markup. The compact codes decoded here are described in sae_kit/dashboard/encoding.py. */
(function () {
  "use strict";

  var held = { site: null, vocab: null, map: null, features: {}, index: {} };
  var pending = {};  /* script src -> callbacks waiting for it */

  window.saeKitRegister = function (kind, key, payload) {
    if (kind === "features" || kind === "index") held[kind][key] = payload;
    else held[kind] = payload;
  };

  /* Add <script src> once; `done` runs when it has run, `failed` if the file is missing. */
  function loadScript(src, done, failed) {
    if (pending[src] === true) { done(); return; }
    if (pending[src]) { pending[src].push([done, failed]); return; }
    pending[src] = [[done, failed]];
    var node = document.createElement("script");
    node.src = src;
    node.onload = function () { var w = pending[src]; pending[src] = true; w.forEach(function (c) { c[0](); }); };
    node.onerror = function () {
      var w = pending[src]; delete pending[src];
      w.forEach(function (c) { if (c[1]) c[1](src); });
    };
    document.head.appendChild(node);
  }

  function pad(n, width) { var s = String(n); while (s.length < width) s = "0" + s; return s; }

  function site() { return held.site; }

  /* -- the compact codes ---------------------------------------------------------------------- */
  var DIGIT = null, OFFSETS = null, T = 0, C = 0, BASE = 0, ZERO = 0;
  function setupCodes() {
    var s = held.site;
    BASE = s.alphabet.length; T = s.terminal; C = BASE - T; ZERO = s.act_zero;
    DIGIT = new Int16Array(128).fill(-1);
    for (var i = 0; i < BASE; i++) DIGIT[s.alphabet.charCodeAt(i)] = i;
    OFFSETS = [0]; for (var L = 1; L <= 4; L++) OFFSETS.push(OFFSETS[L - 1] + Math.pow(C, L - 1) * T);
  }

  /* Ranks of a string of self-delimiting token codes. */
  function decodeCodes(text) {
    var out = [], value = 0, length = 0;
    for (var i = 0; i < text.length; i++) {
      var d = DIGIT[text.charCodeAt(i)];
      if (d >= T) { value = value * C + d - T; length++; }
      else { out.push(OFFSETS[length] + value * T + d); value = 0; length = 0; }
    }
    return out;
  }

  function decodeInt(text, from, width) {
    var v = 0;
    for (var i = from; i < from + width; i++) v = v * BASE + DIGIT[text.charCodeAt(i)];
    return v;
  }

  function tokenText(rank) {
    var t = held.vocab ? held.vocab[rank] : null;
    return typeof t === "string" ? t : "\u2047";
  }

  function texts(codes) { return decodeCodes(codes).map(tokenText); }

  /* Rows of token codes separated by spaces (index columns, neighbour labels) -> [[text]]. */
  function textRows(text) { return text === "" ? [] : text.split(" ").map(texts); }

  /* The examples of a feature record: groups (top, then band 0 … Q−1) of {t, a, c, ctx, pos}. */
  function decodeExamples(rec) {
    var s = held.site, cw = s.context_width, pw = s.position_width, width = 1 + cw + pw;
    var tg = rec.tokens.split("!"), ag = rec.acts.split("!"), wg = rec.where.split("!");
    return tg.map(function (group, g) {
      var toks = group.split(" ").filter(Boolean), acts = ag[g].split(" "), where = wg[g];
      return toks.map(function (codes, j) {
        var t = texts(codes), a = new Array(t.length).fill(0), triples = acts[j] || "";
        for (var i = 0; i + 2 < triples.length; i += 3) {
          var code = DIGIT[triples.charCodeAt(i + 1)] * BASE + DIGIT[triples.charCodeAt(i + 2)];
          a[DIGIT[triples.charCodeAt(i)]] = (code - ZERO) / ZERO * rec.scale;
        }
        var at = j * width;
        return { t: t, a: a, c: DIGIT[where.charCodeAt(at)], ctx: decodeInt(where, at + 1, cw), pos: decodeInt(where, at + 1 + cw, pw) };
      });
    });
  }

  function isBuilt(id) {
    var s = held.site;
    if (!(id >= 0 && id < s.n_features)) return false;
    return ((DIGIT[s.built_bits.charCodeAt(Math.floor(id / 6))] >> (id % 6)) & 1) === 1;
  }

  function firstBuilt() {
    for (var i = 0; i < held.site.n_features; i++) if (isBuilt(i)) return i;
    return null;
  }

  function loadFeature(id, done, failed) {
    var shard = Math.floor(id / held.site.shard_features);
    function pick() {
      var list = held.features[shard] || [];
      for (var i = 0; i < list.length; i++) if (list[i].id === id) { done(list[i]); return; }
      failed("feature " + id + " is not in data/features-" + pad(shard, 5) + ".js");
    }
    if (held.features[shard]) pick();
    else loadScript("data/features-" + pad(shard, 5) + ".js", pick, function (src) { failed(src + " is missing"); });
  }

  /* The index columns of every file, joined: {ids, fires, max, mean, labels, promoted, spark, …}. */
  function loadIndex(progress, done) {
    var n = held.site.index_files, i = 0;
    function next() {
      if (i === n) { done(joinIndex(n)); return; }
      progress(i, n);
      loadScript("data/index-" + pad(i, 3) + ".js", function () { i++; next(); },
                 function (src) { done(null, src + " is missing"); });
    }
    next();
  }

  function joinIndex(n) {
    var cols = { ids: [], fires: [], max: [], mean: [], labels: [], promoted: [], spark: [], explanation: [], detection: [], fuzzing: [] };
    var last = 0;
    for (var f = 0; f < n; f++) {
      var part = held.index[f];
      part.id_deltas.forEach(function (d) { last += d; cols.ids.push(last); });
      Array.prototype.push.apply(cols.fires, part.fires);
      Array.prototype.push.apply(cols.max, part.max);
      Array.prototype.push.apply(cols.mean, part.mean);
      Array.prototype.push.apply(cols.labels, part.labels === "" ? [] : part.labels.split(" "));
      if (part.promoted !== undefined) Array.prototype.push.apply(cols.promoted, part.promoted === "" ? [] : part.promoted.split(" "));
      Array.prototype.push.apply(cols.spark, part.spark === "" ? [] : part.spark.split(" "));
      ["explanation", "detection", "fuzzing"].forEach(function (k) { if (part[k]) Array.prototype.push.apply(cols[k], part[k]); });
      delete held.index[f];  /* the joined copy is all that is kept */
    }
    cols.n = cols.ids.length;
    cols.density = cols.fires.map(function (x) { return x / held.site.n_tokens; });
    return cols;
  }

  /* -- DOM helpers ------------------------------------------------------------------------------- */
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    if (attrs) for (var k in attrs) if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(x, digits) {
    if (x === null || x === undefined || isNaN(x)) return "–";
    if (x === 0) return "0";
    var a = Math.abs(x);
    if (a >= 1e4 || a < 1e-3) return x.toExponential(digits === undefined ? 2 : digits - 1);
    return Number(x.toPrecision(digits || 3)).toString();
  }

  function pct(x) { return fmt(100 * x, 3) + "%"; }

  function featureHref(id) { return "feature.html#" + id; }

  function shade(value, max) {
    if (!(max > 0) || !value) return "";
    var a = Math.max(-1, Math.min(1, value / max));
    return a > 0 ? "rgba(232, 89, 12, " + (0.08 + 0.8 * a).toFixed(3) + ")" : "rgba(28, 126, 214, " + (0.08 - 0.8 * a).toFixed(3) + ")";
  }

  /* One token: its text with every space wrapped so the whitespace toggle can show it. */
  function tokenSpan(text, value, max, tip) {
    var span = el("span", { "class": "tok" });
    var parts = String(text).split(/( +)/);
    for (var i = 0; i < parts.length; i++) {
      if (!parts[i]) continue;
      if (parts[i][0] === " ") span.appendChild(el("span", { "class": "sp" }, parts[i]));
      else span.appendChild(document.createTextNode(parts[i]));
    }
    var bg = shade(value, max);
    if (bg) span.style.background = bg;
    if (tip) span.setAttribute("data-tip", tip);
    return span;
  }

  function chips(list, cls, node) {
    node = node || el("span");
    for (var i = 0; i < list.length; i++) {
      var chip = el("span", { "class": "chip " + (cls || "") });
      chip.appendChild(tokenSpan(list[i], 0, 0, "token " + JSON.stringify(list[i])));
      node.appendChild(chip);
    }
    return node;
  }

  function setupWhitespace() {
    var box = document.getElementById("ws");
    if (!box) return;
    var saved = false;
    try { saved = window.localStorage.getItem("sae-kit-ws") === "1"; } catch (e) { /* file:// may forbid it */ }
    box.checked = saved;
    document.body.classList.toggle("ws-on", saved);
    box.addEventListener("change", function () {
      document.body.classList.toggle("ws-on", box.checked);
      try { window.localStorage.setItem("sae-kit-ws", box.checked ? "1" : "0"); } catch (e) { /* ignore */ }
    });
  }

  function setupTooltip() {
    var tip = document.getElementById("tip");
    if (!tip) return;
    document.addEventListener("mouseover", function (e) {
      var target = e.target.closest ? e.target.closest("[data-tip]") : null;
      if (!target) { tip.hidden = true; return; }
      tip.textContent = target.getAttribute("data-tip");
      tip.hidden = false;
      var r = target.getBoundingClientRect();
      tip.style.left = Math.min(window.innerWidth - 370, Math.max(4, r.left)) + "px";
      tip.style.top = (r.bottom + 6) + "px";
    });
    document.addEventListener("scroll", function () { tip.hidden = true; }, true);
  }

  /* A plotly figure from one of site.js's templates with its trace's data replaced. */
  function figure(kind, trace, layout) {
    var spec = held.site.figures[kind];
    var data = Object.assign({}, spec.data[0], trace);
    return { data: [data], layout: Object.assign({}, spec.layout, layout || {}) };
  }

  function plot(id, spec) {
    var node = document.getElementById(id);
    if (!node) return Promise.resolve();
    node.textContent = "";
    if (!spec || typeof Plotly === "undefined") {
      node.textContent = spec ? "plotly.js is missing from assets/" : ""; node.style.minHeight = "0";
      return Promise.resolve();
    }
    node.style.minHeight = "";
    return Plotly.react(node, spec.data, spec.layout, { displaylogo: false, responsive: true,
      modeBarButtonsToRemove: ["lasso2d", "select2d"] });
  }

  function rendered(done) { document.body.setAttribute("data-rendered", done ? "1" : "0"); }

  function fail(message) {
    var node = document.getElementById("missing") || document.querySelector("main");
    var p = el("p", { "class": "warn", id: "failure" }, message);
    node.hidden = false;
    node.appendChild(p);
    rendered(true);
  }

  window.SaeKit = {
    pages: {}, held: held, site: site, loadScript: loadScript, loadFeature: loadFeature, loadIndex: loadIndex,
    decodeCodes: decodeCodes, decodeExamples: decodeExamples, texts: texts, textRows: textRows, tokenText: tokenText,
    isBuilt: isBuilt, firstBuilt: firstBuilt, el: el, fmt: fmt, pct: pct, featureHref: featureHref, shade: shade,
    tokenSpan: tokenSpan, chips: chips, figure: figure, plot: plot, rendered: rendered, fail: fail
  };

  document.addEventListener("DOMContentLoaded", function () {
    if (!held.site) { fail("data/site.js is missing: rebuild the site with sae-kit dashboard"); return; }
    setupCodes();
    setupWhitespace();
    setupTooltip();
    var map = document.getElementById("nav-map");
    if (map && !held.site.map) map.hidden = true;
    var page = window.SaeKit.pages[document.body.getAttribute("data-page")];
    if (page) page();
  });
})();
