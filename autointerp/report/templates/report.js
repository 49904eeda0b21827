// Feature table and cards for an autointerp report. Data comes from the embedded JSON element
// #report-data. Untrusted text (tokens, labels) only ever reaches the DOM through textContent or
// setAttribute('title', ...), never innerHTML, so corpus text cannot become markup.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var scorers = data.scorers, rows = data.features, cards = data.cards;
  var PAGE = 200, shown = PAGE, sortKey = "id", sortDir = 1, query = "", onlyExplained = false;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(v, d) {
    if (v === null || v === undefined || isNaN(v)) return "\u2014";
    d = d || 3;
    var a = Math.abs(v);
    if (v !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(d - 1);
    return String(Number(v.toPrecision(d)));
  }
  function statusBadge(status) {
    var cls = status === "ok" ? "badge ok" : (status === "dead" || status === "not_explained" ? "badge dead" : "badge fail");
    return el("span", cls, status);
  }
  function showTok(t) { return t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5"); }

  // ------------------------------------------------------------------ table
  var table = document.getElementById("features");
  var thead = table.querySelector("thead"), tbody = table.querySelector("tbody");
  var columns = [
    {key: "id", title: "Feature", num: true},
    {key: "label", title: "Label"},
    {key: "status", title: "Status"},
    {key: "density", title: "Density", num: true},
    {key: "max", title: "Max act.", num: true}
  ];
  scorers.forEach(function (s) { columns.push({key: "score:" + s, title: s, num: true, scorer: s}); });

  function value(row, key) {
    if (key.indexOf("score:") === 0) {
      var v = row.scores[key.slice(6)];
      return v === undefined ? null : v;
    }
    return row[key];
  }
  function buildHead() {
    var tr = el("tr");
    columns.forEach(function (c) {
      var th = el("th", c.num ? "num" : "", c.title);
      th.setAttribute("data-key", c.key);
      if (c.key === sortKey) th.className += sortDir > 0 ? " sorted-asc" : " sorted-desc";
      th.addEventListener("click", function () {
        if (sortKey === c.key) { sortDir = -sortDir; } else { sortKey = c.key; sortDir = c.num && c.key !== "id" ? -1 : 1; }
        render();
      });
      tr.appendChild(th);
    });
    thead.textContent = "";
    thead.appendChild(tr);
  }
  function filtered() {
    var q = query.trim().toLowerCase();
    var exact = /^#\d+$/.test(q) ? Number(q.slice(1)) : null;
    var out = rows.filter(function (r) {
      if (onlyExplained && r.status !== "ok") return false;
      if (exact !== null) return r.id === exact;
      if (!q) return true;
      return String(r.id) === q || (r.label || "").toLowerCase().indexOf(q) >= 0 || r.status.indexOf(q) >= 0;
    });
    out.sort(function (a, b) {
      var x = value(a, sortKey), y = value(b, sortKey);
      if (x === null || x === undefined) return (y === null || y === undefined) ? a.id - b.id : 1;
      if (y === null || y === undefined) return -1;
      if (typeof x === "string") return sortDir * x.localeCompare(y) || a.id - b.id;
      return sortDir * (x - y) || a.id - b.id;
    });
    return out;
  }
  function render() {
    buildHead();
    tbody.textContent = "";
    var list = filtered();
    list.slice(0, shown).forEach(function (r) {
      var tr = el("tr", "row");
      tr.id = "row-" + r.id;
      columns.forEach(function (c) {
        var v = value(r, c.key), td;
        if (c.key === "label") { td = el("td", "label", v === null ? "" : v); if (v === null) td.appendChild(el("span", "muted", "\u2014")); }
        else if (c.key === "status") { td = el("td"); td.appendChild(statusBadge(v)); }
        else if (c.key === "id") { td = el("td", "num", v); }
        else { td = el("td", "num", fmt(v)); }
        tr.appendChild(td);
      });
      tr.addEventListener("click", function () { toggle(r, tr); });
      tbody.appendChild(tr);
    });
    var more = document.getElementById("more");
    more.textContent = "";
    document.getElementById("count").textContent = list.length + " of " + rows.length + " features";
    if (list.length > shown) {
      var b = el("button", "", "Show " + Math.min(PAGE, list.length - shown) + " more");
      b.addEventListener("click", function () { shown += PAGE; render(); });
      more.appendChild(b);
    }
  }
  function toggle(r, tr) {
    var next = tr.nextSibling;
    if (next && next.className === "detail") { tbody.removeChild(next); tr.classList.remove("open"); return; }
    var d = el("tr", "detail"), td = el("td");
    td.colSpan = columns.length;
    td.appendChild(buildCard(r));
    d.appendChild(td);
    tbody.insertBefore(d, tr.nextSibling);
    tr.classList.add("open");
  }

  // ------------------------------------------------------------------ cards
  function tokenSpan(tok, act, scale, rgb, extra) {
    var s = el("span", "tok", showTok(tok));
    var alpha = scale > 0 ? Math.max(0, Math.min(1, act / scale)) : 0;
    if (alpha > 0) s.style.backgroundColor = "rgba(" + rgb + "," + (0.08 + 0.8 * alpha).toFixed(3) + ")";
    s.setAttribute("title", extra + fmt(act));
    return s;
  }
  function contextLine(ctx, scale, rgb, values, prefix) {
    var div = el("div", "ctx");
    if (prefix) div.appendChild(el("span", "rowlabel", prefix));
    else div.appendChild(el("span", "mx", "max " + fmt(ctx.m)));
    if (ctx.pre) div.appendChild(el("span", "muted", "\u2026"));
    ctx.t.forEach(function (tok, i) { div.appendChild(tokenSpan(tok, values[i] || 0, scale, rgb, prefix ? prefix + ": " : "act ")); });
    if (ctx.post) div.appendChild(el("span", "muted", "\u2026"));
    return div;
  }
  var ORANGE = "230,85,13", BLUE = "31,119,180";
  function contexts(parent, list, scale) {
    list.forEach(function (ctx) { parent.appendChild(contextLine(ctx, scale, ORANGE, ctx.a)); });
    if (!list.length) parent.appendChild(el("div", "muted", "none stored"));
  }
  function buildCard(r) {
    var card = el("div", "card");
    var c = cards[String(r.id)];
    var h = el("h3", "", "Feature " + r.id + ": ");
    h.appendChild(el("span", "", r.label === null ? "(no label)" : r.label));
    card.appendChild(h);
    if (!c) {
      card.appendChild(el("div", "muted", r.status === "dead" ? "Dead feature: it never fired on the corpus."
        : "No card for this feature (the report keeps cards for at most --max-cards features)."));
      return card;
    }
    card.appendChild(el("div", "stats", "density " + fmt(c.density) + " \u00b7 fires on " + c.firing +
      " tokens \u00b7 max activation " + fmt(c.max) + " \u00b7 mean activation " + fmt(c.mean)));
    var st = el("div", "stats", "explanation status: ");
    st.appendChild(statusBadge(c.status));
    card.appendChild(st);
    if (c.error) card.appendChild(el("div", "error", c.error));

    card.appendChild(el("h4", "", "Scores"));
    if (c.scores.length) {
      var t = el("table"), head = el("tr");
      ["scorer", "model", "score", "chance", "AUC (logprobs)", "status"].forEach(function (x) { head.appendChild(el("th", "", x)); });
      t.appendChild(head);
      c.scores.forEach(function (s) {
        var tr = el("tr");
        tr.appendChild(el("td", "", s.scorer));
        tr.appendChild(el("td", "muted", s.model));
        tr.appendChild(el("td", "num", fmt(s.score)));
        tr.appendChild(el("td", "num", fmt(s.chance)));
        tr.appendChild(el("td", "num", s.auc === null || s.auc === undefined ? "\u2013" : fmt(s.auc)));
        var tds = el("td"); tds.appendChild(statusBadge(s.status));
        if (s.error) tds.appendChild(el("div", "error", s.error));
        tr.appendChild(tds);
        t.appendChild(tr);
      });
      card.appendChild(t);
    } else {
      card.appendChild(el("div", "muted", "not scored"));
    }

    if (c.promoted.length || c.suppressed.length) {
      card.appendChild(el("h4", "", "Output view (decoder direction through the unembedding)"));
      var cols = el("div", "cols");
      [["promotes", c.promoted, "pos"], ["suppresses", c.suppressed, "neg"]].forEach(function (p) {
        var box = el("div", "tokens");
        box.appendChild(el("div", "muted", p[0]));
        p[1].forEach(function (tv) {
          var s = el("span", "t " + p[2], showTok(tv[0]));
          s.setAttribute("title", "logit " + fmt(tv[1]));
          box.appendChild(s);
        });
        cols.appendChild(box);
      });
      card.appendChild(cols);
    }

    card.appendChild(el("h4", "", "Top activating contexts (explain split)"));
    contexts(card, c.top, c.max);
    if (c.quantiles.length) {
      card.appendChild(el("h4", "", "Quantiles of the uniform activating sample (explain split)"));
      c.quantiles.forEach(function (q) {
        card.appendChild(el("div", "muted", q.name + ", max activation " + fmt(q.range[0]) + " \u2013 " + fmt(q.range[1])));
        contexts(card, q.contexts, c.max);
      });
    }
    var hasSim = c.test.some(function (x) { return x.s; });
    card.appendChild(el("h4", "", hasSim ? "Test contexts: true (orange) vs simulated (blue) activations"
                                         : "Test contexts (held-out documents)"));
    c.test.forEach(function (ctx) {
      if (ctx.s) {
        var simMax = Math.max.apply(null, ctx.s.concat([0]));
        var wrap = el("div", "ctx sim");
        wrap.appendChild(el("div", "muted", ctx.k + " context, max " + fmt(ctx.m)));
        wrap.appendChild(contextLine(ctx, c.max, ORANGE, ctx.a, "true"));
        wrap.appendChild(contextLine(ctx, simMax <= 10 ? 10 : simMax, BLUE, ctx.s, "sim"));
        card.appendChild(wrap);
      } else {
        var line = contextLine(ctx, c.max, ORANGE, ctx.a);
        line.insertBefore(el("span", "badge", ctx.k), line.firstChild);
        card.appendChild(line);
      }
    });
    if (!c.test.length) card.appendChild(el("div", "muted", "none stored"));
    return card;
  }

  // ------------------------------------------------------------------ wiring
  var search = document.getElementById("search");
  search.addEventListener("input", function () { query = search.value; shown = PAGE; render(); });
  document.getElementById("only-explained").addEventListener("change", function (e) {
    onlyExplained = e.target.checked; shown = PAGE; render();
  });
  render();
  function openFromHash() {
    var m = /^#f(\d+)$/.exec(window.location.hash);
    if (!m) return;
    search.value = "#" + m[1]; query = search.value; shown = PAGE; render();
    var tr = document.getElementById("row-" + m[1]);
    if (tr) {
      tr.click();
      if (tr.getBoundingClientRect().top > window.innerHeight - 200) tr.scrollIntoView();
    }
  }
  window.addEventListener("hashchange", openFromHash);
  openFromHash();
  document.body.setAttribute("data-ready", "1");
})();
