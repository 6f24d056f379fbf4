// Gleaner console: the job widget, and the CSRF token on htmx requests.
// No inline script anywhere: the Content-Security-Policy allows scripts of this origin only.
"use strict";

(function () {
  const token = document.querySelector('meta[name="csrf-token"]');
  document.addEventListener("htmx:configRequest", function (e) {
    if (token && e.detail.verb !== "get") {
      e.detail.parameters["csrf"] = token.content;
    }
  });
  // A refused request (4xx) still carries a page part that says why: show it.
  document.addEventListener("htmx:beforeSwap", function (e) {
    const s = e.detail.xhr.status;
    if (s >= 400 && s < 500) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });

  function text(tag, cls, value) {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    el.textContent = value;
    return el;
  }

  // Fire times are rendered in their schedule's timezone; add the browser's own beside them.
  const yours = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    timeZoneName: "short",
  });
  function localTimes(root) {
    for (const t of root.querySelectorAll('time[data-local="browser"]')) {
      if (t.dataset.done) continue;
      t.dataset.done = "1";
      const at = new Date(t.getAttribute("datetime"));
      if (!isNaN(at)) {
        t.after(text("span", "hint yours", " (yours: " + yours.format(at) + ")"));
      }
    }
  }
  localTimes(document);
  // A refused form comes back with its fields marked: take the keyboard to the first one.
  const invalid = document.querySelector('[aria-invalid="true"]');
  if (invalid) invalid.focus();
  document.addEventListener("htmx:afterSwap", (e) => localTimes(e.target));

  const list = document.getElementById("job-widget-list");
  if (!list) {
    return;
  }
  const SHOWN = 5;
  const jobs = new Map();
  const names = {};

  function render() {
    const newest = Array.from(jobs.values())
      .sort((a, b) => (a.created_at < b.created_at ? 1 : -1))
      .slice(0, SHOWN);
    list.replaceChildren();
    for (const j of newest) {
      const li = document.createElement("li");
      li.dataset.jobId = j.id;
      li.dataset.status = j.status;
      const a = text("a", null, names[j.collector_id] || j.plugin_id || j.id.slice(0, 8));
      a.href = "/jobs/" + j.id;
      li.append(a, " ", text("span", "status status-" + j.status.toLowerCase(), j.status));
      const bar = document.createElement("progress");
      bar.max = Math.max(j.tasks_total, 1);
      bar.value = j.status === "SUCCESS" ? bar.max : j.tasks_done;
      bar.setAttribute("aria-label", "tasks of job " + j.id.slice(0, 8));
      li.append(bar, text("span", "tasks", j.tasks_done + "/" + j.tasks_total + " tasks"));
      list.append(li);
    }
  }

  function take(j) {
    const known = jobs.get(j.id);
    jobs.set(j.id, Object.assign({}, known, j));
    render();
  }

  fetch("/jobs/recent", { credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : { items: [] }))
    .then((page) => {
      Object.assign(names, page.collectors || {});
      for (const j of page.items || []) take(j);
    })
    .catch(() => {});

  // EventSource reconnects by itself, sending the last event id back.
  const source = new EventSource("/events");
  source.addEventListener("job", (e) => {
    try {
      take(JSON.parse(e.data));
    } catch (_) {
      // A malformed event is skipped; the next one carries the whole job again.
    }
  });
})();

// The billing trend: one line per currency, drawn once uPlot (loaded by that page) is there.
// The exact figures are in the table below the chart; the chart's numbers are for the eye.
window.addEventListener("load", function () {
  const data = document.getElementById("trend-data");
  const box = document.getElementById("trend-chart");
  if (!data || !box || !window.uPlot) return;
  const trend = JSON.parse(data.textContent).trend || [];
  const days = Array.from(new Set(trend.map((t) => t.day))).sort();
  const currencies = Array.from(new Set(trend.map((t) => t.currency))).sort();
  if (days.length === 0) return;
  const x = days.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
  const series = currencies.map((c) =>
    days.map((d) => {
      const t = trend.find((i) => i.day === d && i.currency === c);
      return t ? Number(t.billed_cost) : null;
    })
  );
  const colors = ["#0b5cad", "#b35c00", "#1a6b2f", "#7a1fa2"];
  new window.uPlot(
    {
      width: Math.min(box.clientWidth || 800, 1000),
      height: 260,
      series: [{ label: "Day" }].concat(
        currencies.map((c, i) => ({ label: c, stroke: colors[i % colors.length], width: 2 }))
      ),
      axes: [{}, {}],
    },
    [x].concat(series),
    box
  );
});

// A resource's metrics: one chart per series, nulls left as gaps.
window.addEventListener("load", function () {
  const data = document.getElementById("metric-data");
  if (!data || !window.uPlot) return;
  const series = JSON.parse(data.textContent).series || [];
  for (const box of document.querySelectorAll(".metric-chart")) {
    const s = series[Number(box.dataset.index)];
    if (!s || !s.labels || s.labels.length === 0) continue;
    const x = s.labels.map((l) => Date.parse(l) / 1000);
    new window.uPlot(
      {
        width: Math.min(box.clientWidth || 800, 1000),
        height: 200,
        series: [{ label: "Time" }, { label: s.metric + " (" + s.unit + ")", stroke: "#0b5cad", width: 2 }],
      },
      [x, s.values],
      box
    );
  }
});
