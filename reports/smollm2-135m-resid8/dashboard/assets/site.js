/* sae-kit dashboard: renders the JSON embedded in each page. Local only: no fetch, no CDN.
   Text always goes through textContent, never innerHTML, so token text cannot inject markup. */
(function () {
  "use strict";

  var DATA = JSON.parse(document.getElementById("data").textContent);
  var ROOT = document.body.getAttribute("data-root") || "";

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

  function featureHref(id) { return ROOT + "features/" + id + ".html"; }

  /* -- whitespace toggle ------------------------------------------------------------------ */
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

  /* -- tokens ------------------------------------------------------------------------------- */
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
    span.setAttribute("data-tip", tip);
    return span;
  }

  function tokenTip(text, value, max) {
    var shown = JSON.stringify(String(text));
    return "token " + shown + "\nactivation " + fmt(value, 4) + (max > 0 ? "  (" + pct(value / max) + " of max)" : "");
  }

  function exampleRow(ex, max) {
    var row = el("div", { "class": "example", "data-index": ex.i });
    row.appendChild(el("span", { "class": "val", title: "activation at the example token" }, fmt(ex.a[ex.c], 4)));
    var text = el("span", { "class": "text" });
    for (var j = 0; j < ex.t.length; j++) {
      var span = tokenSpan(ex.t[j], ex.a[j], max, tokenTip(ex.t[j], ex.a[j], max) +
        (j === ex.c ? "\ncontext " + ex.ctx + ", position " + ex.pos + ", token #" + ex.i : ""));
      if (j === ex.c) span.classList.add("centre");
      text.appendChild(span);
    }
    row.appendChild(text);
    return row;
  }

  /* -- tooltip ---------------------------------------------------------------------------- */
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

  function plot(id, spec) {
    var node = document.getElementById(id);
    if (!node) return;
    if (!spec || typeof Plotly === "undefined") { node.textContent = spec ? "plotly.js is missing from assets/" : ""; node.style.minHeight = "0"; return; }
    Plotly.newPlot(node, spec.data, spec.layout, { displaylogo: false, responsive: true,
      modeBarButtonsToRemove: ["lasso2d", "select2d"] });
  }

  /* -- index page ----------------------------------------------------------------------------- */
  function sparkline(counts) {
    var w = 120, h = 26, n = counts.length, peak = Math.max.apply(null, counts.concat([1]));
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "spark"); svg.setAttribute("width", w); svg.setAttribute("height", h);
    var bw = w / Math.max(n, 1);
    for (var i = 0; i < n; i++) {
      if (!counts[i]) continue;
      var bh = Math.max(1, Math.round((h - 1) * Math.sqrt(counts[i] / peak)));
      var r = document.createElementNS(ns, "rect");
      r.setAttribute("x", (i * bw).toFixed(1)); r.setAttribute("y", h - bh);
      r.setAttribute("width", Math.max(bw - 0.4, 0.6).toFixed(1)); r.setAttribute("height", bh);
      r.setAttribute("fill", "#e8590c");
      svg.appendChild(r);
    }
    return svg;
  }

  function chips(list, cls) {
    var td = el("td");
    td.className = "ws-always";
    for (var i = 0; i < list.length; i++) {
      var chip = el("span", { "class": "chip " + (cls || "") });
      chip.appendChild(tokenSpan(list[i], 0, 0, "token " + JSON.stringify(list[i])));
      td.appendChild(chip);
    }
    return td;
  }

  function renderIndex() {
    var s = DATA.summary;
    var summary = document.getElementById("summary");
    var facts = [["features", s.n_features], ["pages built", s.built], ["dead", s.dead], ["dense (>10%)", s.dense],
                 ["tokens analysed", s.n_tokens.toLocaleString()], ["hook", s.hook], ["model", s.model], ["run", s.run]];
    facts.forEach(function (f) {
      var span = el("span", null, f[0] + ": ");
      span.appendChild(el("b", null, f[1] === null || f[1] === undefined ? "–" : f[1]));
      summary.appendChild(span);
    });
    plot("density-plot", DATA.density);

    var rows = DATA.rows.map(function (r) {
      var tr = el("tr");
      var idCell = el("td", { "class": "num" });
      idCell.appendChild(el("a", { href: featureHref(r.id) }, "#" + r.id));
      tr.appendChild(idCell);
      tr.appendChild(el("td", { "class": "num", title: r.density.toString() }, pct(r.density)));
      tr.appendChild(el("td", { "class": "num" }, fmt(r.max, 4)));
      tr.appendChild(el("td", { "class": "num" }, fmt(r.mean, 3)));
      tr.appendChild(chips(r.label));
      tr.appendChild(chips(r.promoted, "promoted"));
      var h = el("td"); h.appendChild(sparkline(r.hist)); tr.appendChild(h);
      return { data: r, node: tr, haystack: ("#" + r.id + " " + r.label.join(" ") + " " + r.promoted.join(" ")).toLowerCase() };
    });
    var tbody = document.querySelector("#features tbody");
    var count = document.getElementById("count");
    var sortKey = null, ascending = true;

    function value(row, key) {
      var v = row.data[key];
      return Array.isArray(v) ? (v[0] || "").toLowerCase() : v;
    }
    function draw() {
      var query = document.getElementById("search").value.trim().toLowerCase();
      var shown = rows.filter(function (r) { return !query || r.haystack.indexOf(query) >= 0 || String(r.data.id) === query.replace("#", ""); });
      if (sortKey) {
        shown.sort(function (a, b) {
          var x = value(a, sortKey), y = value(b, sortKey);
          var c = x < y ? -1 : x > y ? 1 : a.data.id - b.data.id;
          return ascending ? c : -c;
        });
      }
      var frag = document.createDocumentFragment();
      shown.forEach(function (r) { frag.appendChild(r.node); });
      tbody.textContent = "";
      tbody.appendChild(frag);
      count.textContent = shown.length + " of " + rows.length + " features";
    }
    document.querySelectorAll("#features th[data-key]").forEach(function (th) {
      th.addEventListener("click", function () {
        var key = th.getAttribute("data-key");
        ascending = sortKey === key ? !ascending : (key === "id" || key === "label" || key === "promoted");
        sortKey = key;
        document.querySelectorAll("#features th").forEach(function (o) { o.classList.remove("sorted-asc", "sorted-desc"); });
        th.classList.add(ascending ? "sorted-asc" : "sorted-desc");
        draw();
      });
    });
    document.getElementById("search").addEventListener("input", draw);
    draw();
  }

  /* -- feature page --------------------------------------------------------------------------- */
  function renderFeature() {
    var d = DATA;
    document.title = "Feature " + d.id + " · sae-kit";
    document.getElementById("feature-title").textContent = "Feature #" + d.id;
    var label = document.getElementById("feature-label");
    if (d.label.length) {
      label.appendChild(document.createTextNode("Top tokens: "));
      d.label.forEach(function (t) { var c = el("span", { "class": "chip" }); c.appendChild(tokenSpan(t, 0, 0, JSON.stringify(t))); label.appendChild(c); });
    }
    var stats = document.getElementById("stats");
    [["density", pct(d.density) + " (" + d.fires.toLocaleString() + " of " + d.n_tokens.toLocaleString() + " tokens)"],
     ["max activation", fmt(d.max, 4)], ["mean when firing", fmt(d.mean, 4)]].forEach(function (p) {
      var div = el("div"); div.appendChild(el("dt", null, p[0])); div.appendChild(el("dd", null, p[1])); stats.appendChild(div);
    });
    var prev = document.getElementById("prev"), next = document.getElementById("next");
    if (d.prev !== null) prev.setAttribute("href", d.prev + ".html");
    if (d.next !== null) next.setAttribute("href", d.next + ".html");
    document.getElementById("jump").addEventListener("submit", function (e) {
      e.preventDefault();
      var id = parseInt(document.getElementById("jump-id").value, 10);
      if (id >= 0 && id < d.n_features) window.location.href = id + ".html";
    });
    document.addEventListener("keydown", function (e) {
      if (e.target.tagName === "INPUT") return;
      if (e.key === "ArrowLeft" && d.prev !== null) window.location.href = d.prev + ".html";
      if (e.key === "ArrowRight" && d.next !== null) window.location.href = d.next + ".html";
    });

    plot("hist-plot", d.hist);
    plot("logit-plot", d.logits);
    var lists = document.getElementById("logit-lists");
    [["Promotes", d.promoted, "pos"], ["Suppresses", d.suppressed, "neg"]].forEach(function (group) {
      var col = el("div");
      col.appendChild(el("h3", null, group[0]));
      group[1].forEach(function (p) {
        var row = el("div", { "class": "row" });
        row.appendChild(tokenSpan(p[0], 0, 0, "token " + JSON.stringify(p[0])));
        row.appendChild(el("span", { "class": group[2] }, (p[1] > 0 ? "+" : "") + fmt(p[1], 3)));
        col.appendChild(row);
      });
      lists.appendChild(col);
    });
    if (!d.promoted.length) lists.appendChild(el("p", { "class": "muted" }, "Logit effects were not computed (analysis run with --no-logits)."));

    var top = document.getElementById("top-examples");
    d.top.forEach(function (ex) { top.appendChild(exampleRow(ex, d.max)); });
    if (!d.top.length) top.appendChild(el("p", { "class": "muted" }, "This feature never fired on the analysed tokens."));

    var bands = document.getElementById("bands");
    var colours = ["#fde0c5", "#facba6", "#f8b58b", "#f59e72", "#f2855d", "#ef6a4c", "#eb4a40", "#d23641", "#b22a45", "#8f1f48"];
    d.bands.forEach(function (band, i) {
      var det = el("details", { "class": "band" });
      if (i < 2 && band.examples.length) det.open = true;
      var sum = el("summary");
      var sw = el("span", { "class": "swatch" });
      sw.style.background = colours[Math.min(colours.length - 1, band.q)];
      sum.appendChild(sw);
      sum.appendChild(document.createTextNode("Band " + (band.q + 1) + ": activation " + fmt(band.lo, 3) + " – " + fmt(band.hi, 3) +
        " · " + band.count.toLocaleString() + " tokens" + (band.count ? " · showing " + band.examples.length : "")));
      det.appendChild(sum);
      var box = el("div", { "class": "examples" });
      band.examples.forEach(function (ex) { box.appendChild(exampleRow(ex, d.max)); });
      det.appendChild(box);
      bands.appendChild(det);
    });
  }

  /* -- prompt view ---------------------------------------------------------------------------- */
  function renderPrompts() {
    var built = {};
    DATA.built.forEach(function (id) { built[id] = true; });
    var root = document.getElementById("prompts");
    if (!DATA.prompts.length) root.appendChild(el("p", { "class": "muted" }, "No prompts were built."));
    DATA.prompts.forEach(function (p) {
      var card = el("section", { "class": "card prompt" });
      card.appendChild(el("h2", null, p.title));
      var status = el("p", { "class": "muted" });
      var text = el("div", { "class": "text" });
      var panel = el("div", { "class": "panel" });
      var spans = [];

      /* Shade every token by one feature (fraction of its max), or by each token's strongest feature. */
      function shadeBy(feature) {
        var series = feature === null ? null : p.series[feature];
        spans.forEach(function (span, i) {
          var tok = p.tokens[i], best = tok.f.length ? tok.f[0] : null;
          var frac = series ? series[i] : (best ? best[2] : 0);
          span.style.background = shade(frac, 1);
          span.setAttribute("data-tip", "token " + JSON.stringify(tok.t) + (series ?
            "\n#" + feature + ": " + pct(frac) + " of max" :
            (best ? "\nstrongest: #" + best[0] + " " + fmt(best[1], 4) + " (" + pct(best[2]) + " of max)" : "\nno feature fires")));
        });
        status.textContent = series ? "Shaded by feature #" + feature + " (click another feature, or the title, to change)."
                                    : "Shaded by each token's strongest feature; click a feature below to shade by it.";
      }
      function featureRow(f) {
        var tr = el("tr", { "class": p.series[f[0]] ? "pickable" : null });
        var cell = el("td");
        if (built[f[0]]) cell.appendChild(el("a", { href: featureHref(f[0]) }, "#" + f[0]));
        else cell.appendChild(el("span", { title: "no page built for this feature" }, "#" + f[0]));
        [cell, el("td", { "class": "num" }, fmt(f[1], 4)), el("td", { "class": "num" }, pct(f[2]) + " of max"),
         el("td", { "class": "mono" }, (p.labels[f[0]] || []).join(" "))].forEach(function (c) { tr.appendChild(c); });
        if (p.series[f[0]]) tr.addEventListener("click", function (e) { if (e.target.tagName !== "A") shadeBy(String(f[0])); });
        return tr;
      }
      function show(title, list) {
        panel.textContent = "";
        panel.appendChild(el("b", null, title));
        var table = el("table");
        list.forEach(function (f) { table.appendChild(featureRow(f)); });
        if (!list.length) panel.appendChild(el("p", { "class": "muted" }, "no feature fires here"));
        panel.appendChild(table);
      }
      p.tokens.forEach(function (tok, i) {
        var span = tokenSpan(tok.t, 0, 1, "");
        span.addEventListener("click", function () {
          text.querySelectorAll(".selected").forEach(function (s) { s.classList.remove("selected"); });
          span.classList.add("selected");
          show("Features at token " + JSON.stringify(tok.t), tok.f);
        });
        spans.push(span);
        text.appendChild(span);
        if (tok.t.indexOf("\u21b5") >= 0) text.appendChild(el("br"));  /* a newline token ends the line */
      });
      card.firstChild.addEventListener("click", function () { shadeBy(null); show("Features firing most on this text", p.overall); });
      card.appendChild(status);
      card.appendChild(text);
      card.appendChild(panel);
      shadeBy(null);
      show("Features firing most on this text (click one to shade the text by it)", p.overall);
      root.appendChild(card);
    });
  }

  setupWhitespace();
  setupTooltip();
  var page = document.body.getAttribute("data-page");
  if (page === "index") renderIndex();
  else if (page === "feature") renderFeature();
  else if (page === "prompts") renderPrompts();
  document.body.setAttribute("data-rendered", "1");
})();
