/* sae-kit dashboard, the feature map: one point per feature at its decoder direction's PCA
   coordinates (data/map.js, in the index's order), coloured by log10 density; hover shows the
   top tokens and explanation, a click opens the feature page. WebGL (scattergl) draws 65k+
   points smoothly; without WebGL the page falls back to SVG. */
(function () {
  "use strict";
  var K = window.SaeKit;

  function webgl() {
    try { var c = document.createElement("canvas"); return !!(c.getContext("webgl") || c.getContext("experimental-webgl")); }
    catch (e) { return false; }
  }

  function escape(text) {  /* plotly hover labels understand a little HTML: keep token text literal */
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  K.pages.map = function () {
    var site = K.site(), status = document.getElementById("map-status");
    if (!site.map) { K.fail("This site was built without the feature map (sae-kit dashboard --no-feature-map)."); return; }
    K.loadIndex(function (i, n) { status.textContent = "loading index file " + (i + 1) + " of " + n + "…"; }, function (cols, error) {
      if (!cols) { K.fail(error); return; }
      K.loadScript("data/map.js", function () { draw(cols, site, status); }, function (src) { K.fail(src + " is missing"); });
    });
  };

  function draw(cols, site, status) {
    var m = K.held.map, n = cols.n, x = new Array(n), y = new Array(n), colour = new Array(n), text = new Array(n);
    var floor = Math.log10(0.5 / site.n_tokens);  /* where features that never fired are drawn */
    var hasExpl = site.explanations && cols.explanation.length === n;
    for (var i = 0; i < n; i++) {
      x[i] = m.x0 + m.x[i] * m.dx;
      y[i] = m.y0 + m.y[i] * m.dy;
      colour[i] = cols.density[i] > 0 ? Math.log10(cols.density[i]) : floor;
      var label = K.texts(cols.labels[i] || "").map(function (t) { return JSON.stringify(t); }).join(" ");
      text[i] = "#" + cols.ids[i] + " · density " + K.pct(cols.density[i]) + "<br>" + escape(label || "(no examples)") +
        (hasExpl && cols.explanation[i] ? "<br>" + escape(cols.explanation[i]) : "");
    }
    var gl = webgl();
    var spec = K.figure("map", { type: gl ? "scattergl" : "scatter", x: x, y: y, hovertext: text, customdata: cols.ids,
      marker: Object.assign({}, site.figures.map.data[0].marker, { color: colour, size: n > 20000 ? 3 : n > 2000 ? 5 : 8 }) });
    var node = document.getElementById("map-plot");
    K.plot("map-plot", spec).then(function () {
      if (node.on) node.on("plotly_click", function (event) {
        var point = event.points && event.points[0];
        if (point) window.location.href = K.featureHref(point.customdata);
      });
      status.textContent = n.toLocaleString() + " features (" + (gl ? "WebGL" : "SVG") + ")";
      node.setAttribute("data-points", n);
      K.rendered(true);
    });
  }
})();
