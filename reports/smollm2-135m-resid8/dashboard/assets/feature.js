/* sae-kit dashboard, the feature page: feature.html#123 (or ?f=123) loads the data file holding
   feature 123 and renders it; changing the hash renders another without reloading the page. */
(function () {
  "use strict";
  var K = window.SaeKit, el = K.el, fmt = K.fmt, pct = K.pct;

  function requested() {
    var hash = window.location.hash.replace(/^#/, "");
    var query = /[?&]f=(\d+)/.exec(window.location.search);
    if (/^\d+$/.test(hash)) return parseInt(hash, 10);
    if (query) return parseInt(query[1], 10);
    return null;
  }

  function go(id) { if (id !== null && id !== undefined) window.location.hash = "#" + id; }

  K.pages.feature = function () {
    var current = null;
    document.getElementById("jump").addEventListener("submit", function (e) {
      e.preventDefault();
      var id = parseInt(document.getElementById("jump-id").value, 10);
      if (id >= 0) go(id);
    });
    document.addEventListener("keydown", function (e) {
      if (e.target.tagName === "INPUT" || !current) return;
      if (e.key === "ArrowLeft") go(current.prev);
      if (e.key === "ArrowRight") go(current.next);
    });
    function show() {
      var id = requested();
      if (id === null) id = K.firstBuilt();
      K.rendered(false);
      clear();
      if (id === null || !K.isBuilt(id)) {
        var n = K.site().n_features;
        missing(id === null ? "This site holds no feature." : !(id < n) ? "There is no feature " + id + " (the SAE has " + n + ")." :
          "Feature " + id + " is not in this site (it never fired, or it was not selected when the site was built).");
        return;
      }
      K.loadFeature(id, function (rec) {
        current = rec;
        render(rec);
        K.rendered(true);
      }, function (why) { missing("Feature " + id + " cannot be shown: " + why + "."); });
    }
    window.addEventListener("hashchange", show);
    show();
  };

  function missing(text) {
    var node = document.getElementById("missing");
    node.textContent = text;
    node.hidden = false;
    document.title = "Feature · sae-kit";
    K.rendered(true);
  }

  function clear() {
    document.getElementById("missing").hidden = true;
    ["feature-title", "feature-label", "explanation", "stats", "logit-lists", "top-examples", "bands"].forEach(function (id) {
      document.getElementById(id).textContent = "";
    });
    document.querySelector("#neighbours tbody").textContent = "";
  }

  function tokenTip(text, value, max) {
    return "token " + JSON.stringify(String(text)) + "\nactivation " + fmt(value, 4) + (max > 0 ? "  (" + pct(value / max) + " of max)" : "");
  }

  function exampleRow(ex, max) {
    var row = el("div", { "class": "example" });
    row.appendChild(el("span", { "class": "val", title: "activation at the example token" }, fmt(ex.a[ex.c], 4)));
    var text = el("span", { "class": "text" });
    for (var j = 0; j < ex.t.length; j++) {
      var span = K.tokenSpan(ex.t[j], ex.a[j], max, tokenTip(ex.t[j], ex.a[j], max) +
        (j === ex.c ? "\ncontext " + ex.ctx + ", position " + ex.pos : ""));
      if (j === ex.c) span.classList.add("centre");
      text.appendChild(span);
    }
    row.appendChild(text);
    return row;
  }

  function histogram(rec) {
    var site = K.site(), colours = site.band_colours, H = site.hist_bins, width = rec.hist_upper / H;
    var x = [], c = [];
    rec.hist.forEach(function (_, j) {
      var centre = (j + 0.5) * width, band = 0;
      rec.bands.forEach(function (b, q) { if (centre >= b[0]) band = q; });
      x.push(centre);
      c.push(colours[Math.min(colours.length - 1, band)]);
    });
    return K.figure("histogram", { x: x, y: rec.hist, width: x.map(function () { return width; }),
      marker: { color: c, line: { width: 0 } } });
  }

  function logitFigure(promoted, suppressed) {
    var rows = promoted.concat(suppressed.slice().reverse()), seen = {};
    var labels = rows.map(function (r) {  /* spaces visible; equal labels kept apart by zero-width suffixes */
      var label = r[0].replace(/ /g, "·") || "∅";
      seen[label] = (seen[label] || 0) + 1;
      return label + new Array(seen[label]).join("\u200b");
    });
    var colours = promoted.map(function () { return "#2f9e44"; }).concat(suppressed.map(function () { return "#c92a2a"; }));
    return K.figure("logits", { x: rows.map(function (r) { return r[1]; }), y: labels, marker: { color: colours } });
  }

  function pairs(codes, values) { return K.texts(codes).map(function (t, i) { return [t, values[i]]; }); }

  function render(rec) {
    var site = K.site();
    document.title = "Feature " + rec.id + " · sae-kit";
    document.getElementById("feature-title").textContent = "Feature #" + rec.id;
    document.getElementById("jump-id").value = "";
    var groups = K.decodeExamples(rec), top = groups[0];
    var label = document.getElementById("feature-label"), seen = [];
    top.forEach(function (ex) { var t = ex.t[ex.c]; if (seen.indexOf(t) < 0 && seen.length < 4) seen.push(t); });
    if (seen.length) { label.appendChild(document.createTextNode("Top tokens: ")); K.chips(seen, "", label); }
    explanation(rec);
    var stats = document.getElementById("stats");
    [["density", pct(rec.fires / site.n_tokens) + " (" + rec.fires.toLocaleString() + " of " + site.n_tokens.toLocaleString() + " tokens)"],
     ["max activation", fmt(rec.max, 4)], ["mean when firing", fmt(rec.mean, 4)]].forEach(function (p) {
      var div = el("div"); div.appendChild(el("dt", null, p[0])); div.appendChild(el("dd", null, p[1])); stats.appendChild(div);
    });
    var prev = document.getElementById("prev"), next = document.getElementById("next");
    if (rec.prev !== null) prev.setAttribute("href", "#" + rec.prev); else prev.removeAttribute("href");
    if (rec.next !== null) next.setAttribute("href", "#" + rec.next); else next.removeAttribute("href");

    K.plot("hist-plot", histogram(rec));
    var lists = document.getElementById("logit-lists");
    if (site.logits) {
      var promoted = pairs(rec.promoted, rec.promoted_logits), suppressed = pairs(rec.suppressed, rec.suppressed_logits);
      K.plot("logit-plot", logitFigure(promoted, suppressed));
      [["Promotes", promoted, "pos"], ["Suppresses", suppressed, "neg"]].forEach(function (group) {
        var col = el("div");
        col.appendChild(el("h3", null, group[0]));
        group[1].forEach(function (p) {
          var row = el("div", { "class": "row" });
          row.appendChild(K.tokenSpan(p[0], 0, 0, "token " + JSON.stringify(p[0])));
          row.appendChild(el("span", { "class": group[2] }, (p[1] > 0 ? "+" : "") + fmt(p[1], 3)));
          col.appendChild(row);
        });
        lists.appendChild(col);
      });
    } else {
      K.plot("logit-plot", null);
      lists.appendChild(el("p", { "class": "muted" }, "Logit effects were not computed (analysis run with --no-logit-effects)."));
    }
    neighbours(rec);

    var topNode = document.getElementById("top-examples");
    top.forEach(function (ex) { topNode.appendChild(exampleRow(ex, rec.max)); });
    if (!top.length) topNode.appendChild(el("p", { "class": "muted" }, "This feature never fired on the analysed tokens."));
    var bands = document.getElementById("bands"), colours = site.band_colours;
    for (var q = rec.bands.length - 1; q >= 0; q--) {  /* highest band first */
      var band = rec.bands[q], examples = groups[1 + q] || [];
      var det = el("details", { "class": "band" });
      if (q >= rec.bands.length - 2 && examples.length) det.open = true;
      var sum = el("summary"), sw = el("span", { "class": "swatch" });
      sw.style.background = colours[Math.min(colours.length - 1, q)];
      sum.appendChild(sw);
      sum.appendChild(document.createTextNode("Band " + (q + 1) + ": activation " + fmt(band[0], 3) + " – " + fmt(band[1], 3) +
        " · " + band[2].toLocaleString() + " tokens" + (band[2] ? " · showing " + examples.length : "")));
      det.appendChild(sum);
      var box = el("div", { "class": "examples" });
      examples.forEach(function (ex) { box.appendChild(exampleRow(ex, rec.max)); });
      det.appendChild(box);
      bands.appendChild(det);
    }
  }

  function explanation(rec) {
    var node = document.getElementById("explanation");
    node.hidden = !rec.explanation;
    if (!rec.explanation) return;
    node.appendChild(el("b", null, "Explanation: "));
    node.appendChild(document.createTextNode(rec.explanation));
    var scores = rec.scores || {}, parts = [];
    ["detection", "fuzzing"].forEach(function (name) {
      var s = scores[name];
      if (s && typeof s.balanced_accuracy === "number") parts.push(name + " " + fmt(s.balanced_accuracy, 2) + (s.n ? " (n=" + s.n + ")" : ""));
    });
    if (parts.length) node.appendChild(el("span", { "class": "muted scores" }, " · balanced accuracy: " + parts.join(" · ")));
  }

  function neighbours(rec) {
    var body = document.querySelector("#neighbours tbody"), labels = K.textRows(rec.neighbour_labels || "");
    rec.neighbours.forEach(function (id, i) {
      var tr = el("tr", { "class": "neighbour" }), cell = el("td", { "class": "num" });
      if (K.isBuilt(id)) cell.appendChild(el("a", { href: "#" + id }, "#" + id));
      else cell.appendChild(el("span", { title: "not in this site" }, "#" + id));
      tr.appendChild(cell);
      tr.appendChild(el("td", { "class": "num", title: "decoder cosine" }, rec.cosines[i].toFixed(3)));
      var chipsCell = K.chips(labels[i] || [], "", el("td"));
      var expl = rec.neighbour_explanations && rec.neighbour_explanations[i];
      if (expl) chipsCell.appendChild(el("div", { "class": "muted" }, expl));
      tr.appendChild(chipsCell);
      body.appendChild(tr);
    });
    if (!rec.neighbours.length) body.appendChild(el("tr", null)).appendChild(el("td", { "class": "muted" }, "none computed"));
  }
})();
