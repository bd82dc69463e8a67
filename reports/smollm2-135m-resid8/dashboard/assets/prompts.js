/* sae-kit dashboard, the prompt view: a few texts token by token, with the features firing on each
   token (data embedded in the page, as JSON; features link to their page when the site holds them). */
(function () {
  "use strict";
  var K = window.SaeKit, el = K.el, fmt = K.fmt, pct = K.pct;

  K.pages.prompts = function () {
    var data = JSON.parse(document.getElementById("data").textContent);
    var root = document.getElementById("prompts");
    if (!data.prompts.length) root.appendChild(el("p", { "class": "muted" }, "No prompts were built."));
    data.prompts.forEach(function (p) { root.appendChild(card(p)); });
    K.rendered(true);
  };

  function card(p) {
    var node = el("section", { "class": "card prompt" });
    node.appendChild(el("h2", null, p.title));
    var status = el("p", { "class": "muted" }), text = el("div", { "class": "text" }), panel = el("div", { "class": "panel" });
    var spans = [];

    /* Shade every token by one feature (fraction of its max), or by each token's strongest feature. */
    function shadeBy(feature) {
      var series = feature === null ? null : p.series[feature];
      spans.forEach(function (span, i) {
        var tok = p.tokens[i], best = tok.f.length ? tok.f[0] : null;
        var frac = series ? series[i] : (best ? best[2] : 0);
        span.style.background = K.shade(frac, 1);
        span.setAttribute("data-tip", "token " + JSON.stringify(tok.t) + (series ?
          "\n#" + feature + ": " + pct(frac) + " of max" :
          (best ? "\nstrongest: #" + best[0] + " " + fmt(best[1], 4) + " (" + pct(best[2]) + " of max)" : "\nno feature fires")));
      });
      status.textContent = series ? "Shaded by feature #" + feature + " (click another feature, or the title, to change)."
                                  : "Shaded by each token's strongest feature; click a feature below to shade by it.";
    }
    function featureRow(f) {
      var tr = el("tr", { "class": p.series[f[0]] ? "pickable" : null }), cell = el("td");
      if (K.isBuilt(f[0])) cell.appendChild(el("a", { href: K.featureHref(f[0]) }, "#" + f[0]));
      else cell.appendChild(el("span", { title: "not in this site" }, "#" + f[0]));
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
    p.tokens.forEach(function (tok) {
      var span = K.tokenSpan(tok.t, 0, 1, "");
      span.addEventListener("click", function () {
        text.querySelectorAll(".selected").forEach(function (s) { s.classList.remove("selected"); });
        span.classList.add("selected");
        show("Features at token " + JSON.stringify(tok.t), tok.f);
      });
      spans.push(span);
      text.appendChild(span);
      if (tok.t.indexOf("\u21b5") >= 0) text.appendChild(el("br"));  /* a newline token ends the line */
    });
    node.firstChild.addEventListener("click", function () { shadeBy(null); show("Features firing most on this text", p.overall); });
    node.appendChild(status);
    node.appendChild(text);
    node.appendChild(panel);
    shadeBy(null);
    show("Features firing most on this text (click one to shade the text by it)", p.overall);
    return node;
  }
})();
