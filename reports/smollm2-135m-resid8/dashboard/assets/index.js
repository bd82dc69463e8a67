/* sae-kit dashboard, index page: every built feature in one table. Rows are drawn only where the
   table is scrolled to (virtual scrolling), so 65,536 or a million features stay responsive;
   search and sort run over the columns held in memory. */
(function () {
  "use strict";
  var K = window.SaeKit, el = K.el, fmt = K.fmt, pct = K.pct;
  var ROW = 30, SPARE = 12;

  function sparkline(levels) {
    var w = 96, h = 24, n = levels.length, ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "spark"); svg.setAttribute("width", w); svg.setAttribute("height", h);
    var alphabet = K.site().alphabet, top = alphabet.length - 1, bw = w / Math.max(n, 1);
    for (var i = 0; i < n; i++) {
      var v = alphabet.indexOf(levels[i]);
      if (v <= 0) continue;
      var bh = Math.max(1, Math.round((h - 1) * v / top));
      var r = document.createElementNS(ns, "rect");
      r.setAttribute("x", (i * bw).toFixed(1)); r.setAttribute("y", h - bh);
      r.setAttribute("width", Math.max(bw - 0.6, 0.6).toFixed(1)); r.setAttribute("height", bh);
      r.setAttribute("fill", "#e8590c");
      svg.appendChild(r);
    }
    return svg;
  }

  function summary(s) {
    var node = document.getElementById("summary");
    [["features", s.n_features], ["in this site", s.built], ["dead", s.dead], ["dense (>10%)", s.dense],
     ["tokens analysed", s.n_tokens.toLocaleString()], ["hook", s.hook], ["model", s.model], ["run", s.run]].forEach(function (f) {
      var span = el("span", null, f[0] + ": ");
      span.appendChild(el("b", null, f[1] === null || f[1] === undefined ? "–" : f[1]));
      node.appendChild(span);
    });
  }

  K.pages.index = function () {
    var site = K.site();
    summary(site.summary);
    var d = site.density;
    K.plot("density-plot", K.figure("density", { x: d.x, y: d.y, width: d.width }));
    var count = document.getElementById("count");
    K.loadIndex(function (i, n) { count.textContent = "loading index file " + (i + 1) + " of " + n + "…"; },
                function (cols, error) { if (!cols) K.fail(error); else table(cols, site); });
  };

  function table(cols, site) {
    var hasExpl = site.explanations && cols.explanation.length === cols.n;
    var columns = [["id", "Feature", "num"], ["density", "Density", "num"], ["max", "Max act.", "num"],
                   ["mean", "Mean (≠0)", "num"], ["label", "Top tokens", ""]];
    if (site.logits) columns.push(["promoted", "Promotes", ""]);
    if (hasExpl) columns.push(["explanation", "Explanation", ""], ["detection", "Detect.", "num"], ["fuzzing", "Fuzz.", "num"]);
    columns.push([null, "Histogram", ""]);
    var head = document.getElementById("columns");
    columns.forEach(function (c) { head.appendChild(el("th", { "data-key": c[0], "class": c[2] || null }, c[1])); });

    var labelCache = {}, promotedCache = {};
    function labels(i) { return labelCache[i] || (labelCache[i] = K.texts(cols.labels[i] || "")); }
    function promoted(i) { return promotedCache[i] || (promotedCache[i] = K.texts(cols.promoted[i] || "")); }
    var haystack = null;
    function hay() {  /* built on the first search: "#id tokens promoted explanation", lower case */
      if (haystack) return haystack;
      haystack = new Array(cols.n);
      for (var i = 0; i < cols.n; i++) {
        haystack[i] = ("#" + cols.ids[i] + " " + labels(i).join(" ") + " " + (site.logits ? promoted(i).join(" ") : "") +
                       " " + (hasExpl ? cols.explanation[i] : "")).toLowerCase();
      }
      return haystack;
    }
    function key(i, name) {
      if (name === "id") return cols.ids[i];
      if (name === "label") return (labels(i)[0] || "").toLowerCase();
      if (name === "promoted") return (promoted(i)[0] || "").toLowerCase();
      if (name === "explanation") return cols.explanation[i].toLowerCase();
      var v = cols[name][i];
      return v === null || v === undefined ? -Infinity : v;
    }

    var all = new Array(cols.n);
    for (var i = 0; i < cols.n; i++) all[i] = i;
    var view = all, sortKey = null, ascending = true, query = "";
    var scroller = document.getElementById("table-scroll"), tbody = document.querySelector("#features tbody");
    var tableNode = document.getElementById("features"), count = document.getElementById("count");

    function row(i) {
      var tr = el("tr", { "data-id": cols.ids[i] });
      var idCell = el("td", { "class": "num" });
      idCell.appendChild(el("a", { href: K.featureHref(cols.ids[i]) }, "#" + cols.ids[i]));
      tr.appendChild(idCell);
      tr.appendChild(el("td", { "class": "num", title: String(cols.density[i]) }, pct(cols.density[i])));
      tr.appendChild(el("td", { "class": "num" }, fmt(cols.max[i], 4)));
      tr.appendChild(el("td", { "class": "num" }, fmt(cols.mean[i], 3)));
      tr.appendChild(K.chips(labels(i), "", el("td", { "class": "ws-always chips" })));
      if (site.logits) tr.appendChild(K.chips(promoted(i), "promoted", el("td", { "class": "ws-always chips" })));
      if (hasExpl) {
        tr.appendChild(el("td", { "class": "expl", title: cols.explanation[i] }, cols.explanation[i]));
        tr.appendChild(el("td", { "class": "num" }, cols.detection[i] === null ? "–" : fmt(cols.detection[i], 2)));
        tr.appendChild(el("td", { "class": "num" }, cols.fuzzing[i] === null ? "–" : fmt(cols.fuzzing[i], 2)));
      }
      var h = el("td"); h.appendChild(sparkline(cols.spark[i] || "")); tr.appendChild(h);
      return tr;
    }
    function spacer(height) {
      var tr = el("tr", { "class": "spacer" });
      var td = el("td", { colspan: columns.length });
      td.style.height = height + "px";
      tr.appendChild(td);
      return tr;
    }
    function paint() {  /* only the rows in view, and SPARE rows either side */
      var top = Math.max(0, scroller.scrollTop - 40);
      var first = Math.max(0, Math.floor(top / ROW) - SPARE);
      var last = Math.min(view.length, first + Math.ceil(scroller.clientHeight / ROW) + 2 * SPARE);
      var frag = document.createDocumentFragment();
      frag.appendChild(spacer(first * ROW));
      for (var j = first; j < last; j++) frag.appendChild(row(view[j]));
      frag.appendChild(spacer((view.length - last) * ROW));
      tbody.textContent = "";
      tbody.appendChild(frag);
    }
    function update() {
      var q = query.trim().toLowerCase(), asId = /^#?\d+$/.test(q) ? parseInt(q.replace("#", ""), 10) : null;
      var shown = all;
      if (q) {
        var h = hay();
        shown = all.filter(function (i) { return cols.ids[i] === asId || h[i].indexOf(q) >= 0; });
      }
      if (sortKey) {
        var keys = new Array(cols.n);
        shown.forEach(function (i) { keys[i] = key(i, sortKey); });
        shown = shown.slice().sort(function (a, b) {
          var x = keys[a], y = keys[b];
          var c = x < y ? -1 : x > y ? 1 : cols.ids[a] - cols.ids[b];
          return ascending ? c : -c;
        });
      }
      view = shown;
      count.textContent = view.length.toLocaleString() + " of " + cols.n.toLocaleString() + " features";
      tableNode.setAttribute("data-total", view.length);
      tableNode.setAttribute("data-sort", sortKey ? sortKey + (ascending ? " asc" : " desc") : "");
      scroller.scrollTop = 0;
      paint();
    }
    head.querySelectorAll("th[data-key]").forEach(function (th) {
      th.addEventListener("click", function () {
        var k = th.getAttribute("data-key");
        ascending = sortKey === k ? !ascending : (k === "id" || k === "label" || k === "promoted" || k === "explanation");
        sortKey = k;
        head.querySelectorAll("th").forEach(function (o) { o.classList.remove("sorted-asc", "sorted-desc"); });
        th.classList.add(ascending ? "sorted-asc" : "sorted-desc");
        update();
      });
    });
    var timer = null, search = document.getElementById("search");
    search.addEventListener("input", function () {
      clearTimeout(timer);  /* wait for a pause in typing when there are many rows */
      timer = setTimeout(function () { query = search.value; update(); }, cols.n > 100000 ? 200 : 0);
    });
    var ticking = false;
    scroller.addEventListener("scroll", function () {
      if (ticking) return;
      ticking = true;
      window.requestAnimationFrame(function () { ticking = false; paint(); });
    });
    window.addEventListener("resize", paint);
    update();
    K.rendered(true);
  }
})();
