"use strict";
(function () {
  var D = JSON.parse(document.getElementById("data").textContent);
  var A = D.att, J = D.jobs, N = A.job.length, OUT = D.outcomes;
  var app = document.getElementById("app");
  var tip = document.getElementById("tip");

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function fmtDur(s) {
    if (s == null || !isFinite(s)) return "–";
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    var t = Math.round(s), d = Math.floor(t / 86400), h = Math.floor(t / 3600) % 24,
      m = Math.floor(t / 60) % 60, x = t % 60;
    var p = function (v) { return (v < 10 ? "0" : "") + v; };
    if (d) return d + "d" + p(h) + "h" + p(m) + "m";
    if (h) return h + "h" + p(m) + "m" + p(x) + "s";
    return m + "m" + p(x) + "s";
  }
  function fmtKb(kb) {
    if (kb == null) return "–";
    if (kb < 1024) return kb + " KiB";
    if (kb < 1048576) return (kb / 1024).toFixed(1) + " MiB";
    return (kb / 1048576).toFixed(2) + " GiB";
  }
  function fmtN(n) { return Number(n).toLocaleString("en-US"); }
  function status(i) {
    var o = OUT[A.out[i]];
    if (A.why[i] != null) return D.reasons[A.why[i]];
    if (A.sig[i] != null) return "signal " + A.sig[i];
    if (A.exit[i] != null) return "exit " + A.exit[i];
    if (o === "running") return "running";
    if (o === "interrupted") return "interrupted (no end recorded)";
    return o;
  }
  function durOf(i) {
    var d = A.dur[i];
    if (d != null) return d;
    var e = D.open_end[i];
    return Math.max(0, (e != null ? e : D.span) - A.t0[i]);
  }

  // ---------- header ----------
  var R = D.run, C = D.counts, h = [];
  h.push('<header><h1>jobmill run <span class="mono">' + esc(R.run_id) + "</span></h1>");
  h.push('<code class="cmd">' + esc(R.command || "(command not known here: the queue's workers had it)") + "</code>");
  var opts = [];
  if (R.options && typeof R.options === "object") {
    Object.keys(R.options).forEach(function (k) {
      var v = R.options[k];
      if (v === null || v === false || (Array.isArray(v) && !v.length)) return;
      opts.push(k + "=" + (typeof v === "object" ? JSON.stringify(v) : v));
    });
  }
  var ended = R.ended_utc ? R.ended_utc + " UTC" + (R.end_reason ? " (" + R.end_reason + ")" : "") : "not ended (" + R.state + ")";
  var facts = [
    ["state", R.state], ["host", R.host], ["directory", R.cwd],
    ["started", R.started_utc + " UTC"], ["ended", ended], ["elapsed", fmtDur(D.span)],
    ["options", opts.join("  ") || "–"],
    ["sessions", D.sessions.map(function (s) { return s.kind + " #" + s.id + (s.end_reason ? " (" + s.end_reason + ")" : ""); }).join(", ")],
    ["jobmill", R.version + " · page generated " + R.generated_utc + " UTC"]
  ];
  h.push('<dl class="facts">' + facts.map(function (f) { return "<dt>" + esc(f[0]) + "</dt><dd" + (f[0] === "options" ? ' class="mono"' : "") + ">" + esc(f[1]) + "</dd>"; }).join("") + "</dl>");
  var retried = 0, timeouts = 0;
  for (var i = 0; i < N; i++) { if (A.out[i] === 1) retried++; if (A.to[i]) timeouts++; }
  var total = R.input_complete && R.total_jobs != null ? R.total_jobs : C.queued + C.running + C.done + C.failed + C.dead;
  var tots = [["jobs", total, ""], ["done", C.done, "done"], ["failed", C.failed, "failed"], ["dead", C.dead, "dead"],
    ["running", C.running, ""], ["queued", C.queued, ""], ["attempts", N, ""], ["retried attempts", retried, ""], ["timed out", timeouts, ""]];
  h.push('<div class="totals">' + tots.map(function (t) { return '<div class="total ' + t[2] + '"><b>' + fmtN(t[1]) + "</b><span>" + t[0] + "</span></div>"; }).join("") + "</div>");
  if (D.notes.length) h.push('<ul class="notes">' + D.notes.map(function (n) { return "<li>" + esc(n) + "</li>"; }).join("") + "</ul>");
  h.push("</header>");

  // ---------- sections (filled below) ----------
  h.push('<section id="timeline-sec"><h2>Timeline: every attempt, one row per ' + esc(D.lane_kind) + '</h2><div class="legend">' +
    OUT.map(function (o) { return '<span><i class="o-' + o + '"></i>' + o + "</span>"; }).join("") +
    '</div><div class="timeline" id="timeline"></div></section>');
  h.push('<section><h2>Throughput over time</h2><div class="chart" id="throughput"></div></section>');
  h.push('<section><h2>Distributions</h2><div class="charts"><div class="chart"><h3>Duration of attempts</h3><div id="hist-dur"></div></div>' +
    '<div class="chart"><h3>Peak memory (RSS) of attempts</h3><div id="hist-rss"></div></div></div></section>');
  h.push('<section id="failures-sec"><h2>Failures by cause and exit status</h2><div id="failures"></div></section>');
  h.push('<section><h2>The slowest and the largest jobs</h2><div class="tables"><div id="slowest"></div><div id="largest"></div></div></section>');
  app.innerHTML = h.join("");

  // ---------- timeline ----------
  var span = D.span > 0 ? D.span : 1;
  var tl = document.getElementById("timeline");

  function axisHtml() {
    var ticks = niceTicks(0, span, 8), s = '<div class="tl-axis">';
    ticks.forEach(function (t) { s += '<span style="left:' + (t / span * 100) + '%">' + fmtDur(t) + "</span>"; });
    s += "</div>";
    // Where each resume started (the slots of a new session start afresh).
    var marks = D.sessions.filter(function (x) { return x.id > 1; });
    if (marks.length) {
      s += '<div class="tl-axis tl-sessions">';
      marks.forEach(function (x) {
        var pct = Math.min(100, Math.max(0, x.start) / span * 100);
        s += '<span style="left:' + pct + "%" + (pct > 90 ? ";transform:translateX(-100%)" : pct < 10 ? ";transform:none" : "") + '">▲ ' + esc(x.kind) + " #" + x.id + "</span>";
      });
      s += "</div>";
    }
    return s;
  }
  function tipHtml(i) {
    var j = A.job[i], o = OUT[A.out[i]];
    var who = " · slot " + A.slot[i] + (A.worker[i] != null ? " · worker " + A.worker[i] : "") +
      (A.host[i] != null ? " · host " + esc(D.hosts[A.host[i]]) : "");
    var cause = A.cause[i] != null ? " · cause " + D.causes[A.cause[i]] : "";
    return "<b>job " + J.seq[j] + "</b> · attempt " + A.n[i] + who + " · " + esc(o) +
      '<br>input: <span class="mono">' + esc(J.input[j]) + "</span>" +
      "<br>started +" + fmtDur(A.t0[i]) + " · duration " + (A.dur[i] == null ? "(no end recorded)" : fmtDur(A.dur[i])) +
      "<br>" + esc(status(i)) + (A.to[i] ? " (timed out)" : "") + cause + " · peak RSS " + fmtKb(A.rss[i]);
  }
  function showTip(ev, html) {
    tip.innerHTML = html; tip.hidden = false;
    var x = ev.clientX + 14, y = ev.clientY + 14;
    var w = tip.offsetWidth, hh = tip.offsetHeight;
    if (x + w > innerWidth - 8) x = Math.max(8, ev.clientX - w - 14);
    if (y + hh > innerHeight - 8) y = Math.max(8, ev.clientY - hh - 14);
    tip.style.left = x + "px"; tip.style.top = y + "px";
  }
  function hideTip() { tip.hidden = true; }

  if (N === 0) {
    tl.innerHTML = '<p class="muted">No attempt recorded yet.</p>';
  } else if (N <= D.dom_bar_limit) {
    // One DOM element per attempt.
    var rows = D.lanes.map(function () { return []; });
    for (var k = 0; k < N; k++) {
      var left = A.t0[k] / span * 100, width = durOf(k) / span * 100;
      rows[A.lane[k]].push('<div class="bar o-' + OUT[A.out[k]] + '" data-i="' + k +
        '" style="left:' + left.toFixed(4) + "%;width:" + width.toFixed(4) + '%"></div>');
    }
    tl.innerHTML = rows.map(function (bars, r) {
      return '<div class="tl-row"><div class="tl-label" title="' + esc(D.lanes[r]) + '">' + esc(D.lanes[r]) + '</div><div class="tl-track">' + bars.join("") + "</div></div>";
    }).join("") + axisHtml();
    tl.addEventListener("mouseover", function (ev) {
      var b = ev.target.closest(".bar");
      if (b) showTip(ev, tipHtml(+b.dataset.i)); else hideTip();
    });
    tl.addEventListener("mousemove", function (ev) { if (!tip.hidden && ev.target.closest(".bar")) showTip(ev, tip.innerHTML); });
    tl.addEventListener("mouseleave", hideTip);
  } else {
    // A canvas: every attempt is a rectangle; hover finds it by slot and time.
    var nRows = D.lanes.length, rowH = Math.max(3, Math.min(16, Math.floor(640 / nRows))), gap = rowH > 6 ? 2 : 0;
    var labels = '<div class="tl-canvas-labels" style="height:' + nRows * rowH + 'px">';
    var every = Math.ceil(12 / rowH);
    D.lanes.forEach(function (s, r) { if (r % every === 0) labels += '<span style="top:' + (r * rowH + rowH / 2 - 7) + 'px">' + esc(s) + "</span>"; });
    tl.innerHTML = '<div class="tl-canvas-wrap">' + labels + '</div><canvas class="tl" id="tl-canvas" style="height:' + nRows * rowH + 'px"></canvas></div>' + axisHtml();
    var cv = document.getElementById("tl-canvas"), dpr = window.devicePixelRatio || 1;
    var W = cv.clientWidth || 1000, H = nRows * rowH;
    cv.width = Math.round(W * dpr); cv.height = Math.round(H * dpr);
    var ctx = cv.getContext("2d");
    ctx.scale(dpr, dpr);
    ctx.fillStyle = "#f3f4f6"; ctx.fillRect(0, 0, W, H);
    var colors = OUT.map(function (o) { return getComputedStyle(document.documentElement).getPropertyValue("--" + o).trim() || "#888"; });
    var sx = W / span;
    // By outcome, so the fill colour is set 6 times in all; done first, so
    // the rarer outcomes are drawn over it.
    for (var oc = 0; oc < OUT.length; oc++) {
      ctx.fillStyle = colors[oc];
      for (var q = 0; q < N; q++) {
        if (A.out[q] !== oc) continue;
        var r0 = A.lane[q];
        ctx.fillRect(A.t0[q] * sx, r0 * rowH + gap / 2, Math.max(1, durOf(q) * sx), rowH - gap);
      }
    }
    // Per row: attempt indexes in start order (the data is in start order).
    var byRow = D.lanes.map(function () { return []; });
    for (var z = 0; z < N; z++) byRow[A.lane[z]].push(z);
    cv.addEventListener("mousemove", function (ev) {
      var rect = cv.getBoundingClientRect();
      var row = Math.floor((ev.clientY - rect.top) / rowH), t = (ev.clientX - rect.left) / rect.width * span;
      var list = byRow[row];
      if (!list) { hideTip(); return; }
      var tol = 2 * span / rect.width, lo = 0, hi = list.length;
      while (lo < hi) { var mid = (lo + hi) >> 1; if (A.t0[list[mid]] <= t + tol) lo = mid + 1; else hi = mid; }
      var best = -1;
      for (var p = lo - 1; p >= 0 && p >= lo - 64; p--) {
        var a = list[p];
        if (A.t0[a] + durOf(a) + tol >= t) { best = a; break; }
      }
      if (best >= 0) showTip(ev, tipHtml(best)); else hideTip();
    });
    cv.addEventListener("mouseleave", hideTip);
  }

  // ---------- charts (SVG, a fixed number of elements) ----------
  function niceTicks(lo, hi, n) {
    var range = hi - lo; if (!(range > 0)) return [lo];
    var step = Math.pow(10, Math.floor(Math.log10(range / n))), err = range / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var out = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(t);
    return out;
  }
  // series: [{values:[...], color}] stacked; xLabels(i) for bin i; line: optional [{values, color, label}]
  function barChart(el, nb, series, xlab, opts) {
    var W = Math.max(360, Math.round(el.clientWidth || 640)), H = opts.h || 200, L = 48, Rm = opts.right ? 44 : 12, T = 10, B = 30;
    var pw = W - L - Rm, ph = H - T - B, max = 0;
    for (var b = 0; b < nb; b++) { var s = 0; series.forEach(function (se) { s += se.values[b]; }); max = Math.max(max, s); }
    if (max === 0) max = 1;
    var svg = ['<svg viewBox="0 0 ' + W + " " + H + '" width="' + W + '" height="' + H + '" role="img">'];
    niceTicks(0, max, 4).forEach(function (t) {
      var y = T + ph - t / max * ph;
      svg.push('<line x1="' + L + '" x2="' + (L + pw) + '" y1="' + y + '" y2="' + y + '" stroke="#eceef1"/><text x="' + (L - 6) + '" y="' + (y + 4) + '" text-anchor="end">' + fmtN(t) + "</text>");
    });
    var bw = pw / nb;
    for (var i = 0; i < nb; i++) {
      var y0 = T + ph;
      series.forEach(function (se) {
        var v = se.values[i]; if (!v) return;
        var hh = v / max * ph;
        svg.push('<rect x="' + (L + i * bw + 0.5).toFixed(2) + '" y="' + (y0 - hh).toFixed(2) + '" width="' + Math.max(0.5, bw - 1).toFixed(2) + '" height="' + hh.toFixed(2) + '" fill="' + se.color + '"><title>' + esc(xlab(i) + ": " + fmtN(v) + " " + se.name) + "</title></rect>");
        y0 -= hh;
      });
    }
    var lines = opts.lines || [];
    // Each line has a scale of its own (running and queued counts differ
    // by orders of magnitude); the right axis is the first line's.
    lines.forEach(function (ln, li) {
      var lm = 1, pts = [];
      ln.values.forEach(function (v) { if (v > lm) lm = v; });
      ln.max = lm;
      ln.values.forEach(function (v, k) { pts.push((L + (k + 0.5) * bw).toFixed(1) + "," + (T + ph - v / lm * ph).toFixed(1)); });
      svg.push('<polyline fill="none" stroke="' + ln.color + '" stroke-width="2" points="' + pts.join(" ") + '"/>');
      if (li === 0) niceTicks(0, lm, 4).forEach(function (t) { svg.push('<text x="' + (L + pw + 6) + '" y="' + (T + ph - t / lm * ph + 4) + '" style="fill:' + ln.color + '">' + fmtN(t) + "</text>"); });
    });
    var every = Math.max(1, Math.ceil(nb / 8));
    for (var x = 0; x < nb; x += every) svg.push('<text x="' + (L + (x + 0.5) * bw) + '" y="' + (H - 12) + '" text-anchor="middle">' + esc(xlab(x, true)) + "</text>");
    svg.push('<line x1="' + L + '" x2="' + (L + pw) + '" y1="' + (T + ph) + '" y2="' + (T + ph) + '" stroke="#98a2b3"/></svg>');
    var legend = '<div class="legend">' + series.map(function (se) { return '<span><i style="background:' + se.color + '"></i>' + esc(se.name) + "</span>"; }).join("") +
      lines.map(function (ln, li) { return '<span><i style="background:' + ln.color + '"></i>' + esc(ln.name) + (li === 0 ? " (right axis)" : " (own scale, up to " + fmtN(ln.max) + ")") + "</span>"; }).join("") + "</div>";
    el.innerHTML = (opts.caption ? '<p class="muted">' + opts.caption + "</p>" : "") + legend + svg.join("");
  }

  // Throughput: finished attempts per interval, by outcome; running at each interval.
  (function () {
    var el = document.getElementById("throughput");
    if (!N) { el.innerHTML = '<p class="muted">No attempt recorded yet.</p>'; return; }
    var nb = Math.min(80, Math.max(10, Math.ceil(span))), w = span / nb;
    var byOut = OUT.map(function () { var a = new Array(nb); for (var i = 0; i < nb; i++) a[i] = 0; return a; });
    var delta = new Float64Array(nb + 1);
    for (var i = 0; i < N; i++) {
      var t1 = A.t0[i] + durOf(i), b = Math.min(nb - 1, Math.floor(t1 / w));
      if (A.dur[i] != null) byOut[A.out[i]][b]++;
      // Busy time of each interval: the average number running in it.
      var s = A.t0[i], e = t1, bs = Math.min(nb - 1, Math.floor(s / w)), be = Math.min(nb - 1, Math.floor(e / w));
      for (var k = bs; k <= be; k++) {
        var lo = Math.max(s, k * w), hi = Math.min(e, (k + 1) * w);
        if (hi > lo) delta[k] += (hi - lo) / w;
      }
    }
    var running = Array.prototype.slice.call(delta, 0, nb).map(function (v) { return Math.round(v * 10) / 10; });
    var lines = [{ name: "running (average)", color: "#1f77b4", values: running }];
    if (D.read_times) {
      // Queued at the end of each interval: jobs read by then, less those
      // finished by then and those running then.
      var cnt = new Float64Array(nb), run = new Float64Array(nb + 1);
      var bin = function (t) { return Math.min(nb - 1, Math.max(0, Math.floor(t / w))); };
      for (var jx = 0; jx < J.seq.length; jx++) {
        if (J.read[jx] != null) cnt[bin(J.read[jx])]++;
        if (J.fin[jx] != null) cnt[bin(J.fin[jx])]--;
      }
      for (var ax = 0; ax < N; ax++) {
        // Running at the end of intervals sb..eb-1.
        var sb = bin(A.t0[ax]), eb = A.dur[ax] == null && D.open_end[ax] == null ? nb : bin(A.t0[ax] + durOf(ax));
        if (sb < eb) { run[sb]++; run[eb]--; }
      }
      var queued = [], acc = 0, busy = 0;
      for (var bx = 0; bx < nb; bx++) {
        acc += cnt[bx]; busy += run[bx];
        queued.push(Math.max(0, acc - busy));
      }
      lines.push({ name: "queued (at the interval's end)", color: "#b07aa1", values: queued });
    }
    var names = ["done", "requeued (retried)", "failed", "dead", "interrupted", "running"];
    var series = [0, 2, 3, 1, 4].map(function (o) { return { name: names[o], color: "var(--" + OUT[o] + ")", values: byOut[o] }; })
      .filter(function (se) { return se.values.some(function (v) { return v > 0; }); });
    barChart(el, nb, series, function (i, short) { return short ? fmtDur(i * w) : "+" + fmtDur(i * w) + "–" + fmtDur((i + 1) * w); },
      { h: 230, right: true, lines: lines,
        caption: "Attempts ended per interval of " + fmtDur(w) + ", by outcome, and the average number of attempts running in it" +
          (D.read_times ? ", and the jobs read but not started or finished at its end." : ". Queued counts are not drawn: this journal does not record when each job was read.") });
  })();

  // Histograms: linear bins, or logarithmic when the values span more than 50×.
  function histogram(el, values, fmt, unit) {
    if (!values.length) { el.innerHTML = '<p class="muted">Not recorded.</p>'; return; }
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) { if (v < lo) lo = v; if (v > hi) hi = v; });
    var nb = 30, log = lo > 0 && hi / lo > 50, f, g;
    if (log) { var a = Math.log(lo), z = Math.log(hi) - a || 1; f = function (v) { return (Math.log(v) - a) / z; }; g = function (x) { return Math.exp(a + x * z); }; }
    else { var r = hi - lo || 1; f = function (v) { return (v - lo) / r; }; g = function (x) { return lo + x * r; }; }
    var bins = new Array(nb); for (var i = 0; i < nb; i++) bins[i] = 0;
    values.forEach(function (v) { bins[Math.min(nb - 1, Math.floor(f(v) * nb))]++; });
    barChart(el, nb, [{ name: "attempts", color: "#4e79a7", values: bins }], function (i, short) {
      return short ? fmt(g(i / nb)) : fmt(g(i / nb)) + " – " + fmt(g((i + 1) / nb));
    }, { h: 190, caption: fmtN(values.length) + " attempts; " + (log ? "logarithmic" : "linear") + " bins from " + fmt(lo) + " to " + fmt(hi) + (unit || "") });
  }
  var durs = [], rss = [];
  for (var d = 0; d < N; d++) { if (A.dur[d] != null) durs.push(A.dur[d]); if (A.rss[d] != null) rss.push(A.rss[d]); }
  histogram(document.getElementById("hist-dur"), durs, fmtDur);
  histogram(document.getElementById("hist-rss"), rss, fmtKb);

  // ---------- failures ----------
  (function () {
    var el = document.getElementById("failures");
    if (!D.failures.length) { el.innerHTML = '<p class="muted">No job failed.</p>'; return; }
    var out = ['<p class="muted">' + fmtN(D.failed_total) + " failed or dead jobs in " + D.failures.length + " group" + (D.failures.length === 1 ? "" : "s") +
      (D.failed_listed < D.failed_total ? "; the first " + fmtN(D.failed_listed) + " are listed" : "") +
      ". Inputs are shown escaped (\\n, \\t, \\xHH for bytes that are not UTF-8).</p>"];
    D.failures.forEach(function (g, gi) {
      out.push('<details class="group"' + (gi < 8 ? " open" : "") + '><summary><span class="count">' + fmtN(g.count) + "</span>" + esc(g.reason) + "</summary>");
      out.push('<table class="failures"><thead><tr><th class="num">job</th><th>input</th><th>state</th><th class="num">attempts</th><th>exit / signal</th><th>reason</th><th>last lines of stderr</th></tr></thead><tbody>');
      g.jobs.forEach(function (f) {
        out.push('<tr data-seq="' + f.seq + '"><td class="num">' + f.seq + '</td><td class="input">' + esc(f.input) + "</td><td>" + esc(f.state) +
          '</td><td class="num">' + f.attempts + "</td><td>" + (f.sig != null ? "signal " + f.sig : f.exit != null ? "exit " + f.exit : "–") +
          "</td><td>" + (f.why != null ? esc(f.why) : "–") + "</td><td>" + (f.stderr != null ? "<pre>" + esc(f.stderr) + "</pre>" : f.stderr_bytes ? '<span class="muted">' + fmtN(f.stderr_bytes) + " bytes (not shown)</span>" : '<span class="muted">none</span>') + "</td></tr>");
      });
      if (g.jobs.length < g.count) out.push('<tr><td colspan="7" class="muted">… and ' + fmtN(g.count - g.jobs.length) + " more (see <code>jobmill results --failed --dead</code>)</td></tr>");
      out.push("</tbody></table></details>");
    });
    el.innerHTML = out.join("");
  })();

  // ---------- slowest and largest ----------
  function topTable(el, title, rows, key) {
    if (!rows.length) { el.innerHTML = "<h3>" + title + '</h3><p class="muted">Not recorded.</p>'; return; }
    el.innerHTML = "<h3>" + title + '</h3><table><thead><tr><th class="num">job</th><th class="num">' + (key === "duration" ? "duration" : "peak RSS") +
      "</th><th>outcome</th><th>input</th></tr></thead><tbody>" + rows.map(function (r) {
        return '<tr><td class="num">' + r.seq + (r.attempt > 1 ? '<span class="muted"> #' + r.attempt + "</span>" : "") + '</td><td class="num">' +
          (key === "duration" ? fmtDur(r.duration) : fmtKb(r.rss)) + "</td><td>" + esc(r.outcome) + '</td><td class="input">' + esc(r.input) + "</td></tr>";
      }).join("") + "</tbody></table>";
  }
  topTable(document.getElementById("slowest"), "Slowest", D.slowest, "duration");
  topTable(document.getElementById("largest"), "Largest (peak memory)", D.largest, "rss");

  // `#hover=job-N` (for tests and links): hovers job N's last attempt with
  // a synthetic pointer event, through the same handlers as a mouse.
  var hv = /[#&]hover=job-(\d+)/.exec(location.hash);
  if (hv && N) {
    var want = +hv[1], at = -1;
    for (var w = 0; w < N; w++) if (J.seq[A.job[w]] === want) at = w;
    if (at >= 0) {
      if (N <= D.dom_bar_limit) {
        var el = tl.querySelector('.bar[data-i="' + at + '"]'), rc = el.getBoundingClientRect();
        el.dispatchEvent(new MouseEvent("mouseover", { bubbles: true, clientX: rc.left + 1, clientY: rc.top + 1 }));
      } else {
        var cnv = document.getElementById("tl-canvas"), cr = cnv.getBoundingClientRect();
        var rowHeight = cr.height / D.lanes.length;
        cnv.dispatchEvent(new MouseEvent("mousemove", {
          clientX: cr.left + (A.t0[at] + durOf(at) / 2) / span * cr.width,
          clientY: cr.top + (A.lane[at] + 0.5) * rowHeight
        }));
      }
    }
  }

  document.body.setAttribute("data-rendered", "ok");
  window.addEventListener("load", function () {
    document.getElementById("load-ms").textContent = performance.now().toFixed(1);
  });
})();
