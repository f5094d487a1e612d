// The ftaas console: plain JavaScript for the browser, no build step, no third-party code.
// Rules this file keeps: the API key lives in this tab's sessionStorage and travels only as a bearer header
// (never in a URL, a cookie or a log); whatever the server returns is put on the page as text (nodes built
// with `el`, text set with `append`/`textContent`), never parsed as markup; the page runs no inline script
// (the Content-Security-Policy of /console forbids it).
"use strict";

(() => {
  const KEY = "ftaas-api-key";
  const POLL_MS = 2000;
  const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
  const STATUSES = ["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"];
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  const signOutButton = document.getElementById("sign-out");
  const announcer = document.getElementById("status");
  let stopPolling = () => {};

  /** An element with attributes (on* names add listeners) and children (strings become text nodes). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    for (const child of children) node.append(child instanceof Node ? child : String(child));
    return node;
  }

  function announce(text) { announcer.textContent = text; }

  function when(seconds) {
    return seconds ? new Date(seconds * 1000).toLocaleString() : "";
  }

  class Unauthorized extends Error {}

  /** A call to the /v1 API with this tab's key; the parsed JSON body, or an Error with the API's message. */
  async function api(path, options = {}) {
    const key = sessionStorage.getItem(KEY);
    const headers = { ...(options.headers || {}), Authorization: `Bearer ${key}` };
    const response = await fetch(`/v1${path}`, { ...options, headers, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) throw new Unauthorized(body.error ? body.error.message : "unauthorized");
    if (!response.ok) throw new Error(body.error ? body.error.message : `${response.status} ${response.statusText}`);
    return body;
  }

  /** A file's content (GET /v1/files/{id}/content): the response, once it is known to be a success. */
  async function fileContent(id) {
    const response = await fetch(`/v1/files/${encodeURIComponent(id)}/content`, {
      headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` }, cache: "no-store" });
    if (response.status === 401) throw new Unauthorized("unauthorized");
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    return response;
  }

  async function fileText(id) {
    return (await fileContent(id)).text();
  }

  /** Save a file of the project to the user's disk (fetched with the key: a plain link could not carry it). */
  async function saveFile(id, filename) {
    const url = URL.createObjectURL(await (await fileContent(id)).blob());
    const link = el("a", { href: url, download: filename || id, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  function downloadButton(id, filename, label = "Download") {
    return el("button", { type: "button", class: "secondary", "data-download": id,
                          "aria-label": `${label} ${filename || id}`,
                          onclick: () => saveFile(id, filename).catch((error) => announce(`Download failed: ${error.message}`)) },
      label);
  }

  /** JSON lines (blank lines skipped). */
  function jsonLines(content) {
    return content.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line));
  }

  /** Run `refresh` now and every POLL_MS until the view changes or it returns true (nothing more to follow). */
  function poll(refresh) {
    let active = true;
    let handle = null;
    let first = true;
    const tick = async () => {
      if (!active) return;
      let done = false;
      try {
        done = await refresh();
      } catch (error) {
        if (error instanceof Unauthorized) { signOut("The server no longer accepts this API key."); return; }
        if (first) {  // nothing to show (e.g. no such job for this key): say why instead of an empty page
          main.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
          return;
        }
        announce(`Refresh failed: ${error.message}`);
      }
      first = false;
      if (active && !done) handle = setTimeout(tick, POLL_MS);
    };
    stopPolling = () => { active = false; clearTimeout(handle); };
    return tick();
  }

  // ------------------------------------------------------------------------------------------- sign in
  function signOut(message) {
    stopPolling();
    sessionStorage.removeItem(KEY);
    nav.hidden = true;
    signOutButton.hidden = true;
    signInView(message);
  }

  function signInView(message) {
    const input = el("input", { id: "api-key", type: "password", autocomplete: "off", spellcheck: "false",
                                required: true, "aria-describedby": "sign-in-help" });
    const problem = el("p", { id: "sign-in-error", class: "error", role: "alert" }, message || "");
    const form = el("form", { class: "sign-in", "aria-labelledby": "sign-in-title" },
      el("h1", { id: "sign-in-title" }, "Sign in"),
      el("label", { for: "api-key" }, "API key"),
      input,
      el("p", { id: "sign-in-help", class: "muted" },
        "The key `ftaas up` printed, or one from `ftaas keys create`. It stays in this tab only."),
      el("button", { type: "submit" }, "Sign in"),
      problem);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      try {
        await api("/models");
      } catch (error) {
        sessionStorage.removeItem(KEY);
        problem.textContent = error instanceof Unauthorized
          ? "This API key was refused: check it and try again."
          : `The server could not be reached: ${error.message}`;
        input.focus();
        return;
      }
      if (!location.hash || location.hash === "#/") location.hash = "#/jobs";
      route();
    });
    main.replaceChildren(form);
    input.focus();
  }

  // ---------------------------------------------------------------------------------------------- jobs
  function methodOf(job) {
    return (job.method && job.method.type) || "supervised";
  }

  function statusCell(status) {
    return el("td", { class: `status-${status}` }, status);
  }

  async function jobsView() {
    const statusFilter = el("select", { id: "filter-status" }, el("option", { value: "" }, "any"),
      STATUSES.map((s) => el("option", { value: s }, s)));
    const modelFilter = el("select", { id: "filter-model" }, el("option", { value: "" }, "any"));
    const rows = el("tbody");
    const count = el("p", { class: "muted", id: "jobs-count" });
    let jobs = [];
    const render = () => {
      const shown = jobs.filter((job) => (!statusFilter.value || job.status === statusFilter.value)
        && (!modelFilter.value || job.model === modelFilter.value));
      rows.replaceChildren(...shown.map((job) => el("tr", { "data-job": job.id },
        el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id),
          job.user_provided_suffix ? el("div", { class: "muted" }, job.user_provided_suffix) : null),
        statusCell(job.status),
        el("td", {}, job.model),
        el("td", {}, methodOf(job)),
        el("td", {}, when(job.created_at)),
        el("td", {}, job.trained_tokens === null || job.trained_tokens === undefined ? "" : job.trained_tokens))));
      count.textContent = `${shown.length} of ${jobs.length} jobs`;
    };
    statusFilter.addEventListener("change", render);
    modelFilter.addEventListener("change", render);
    main.replaceChildren(
      el("h1", {}, "Fine-tuning jobs"),
      el("div", { class: "filters", role: "group", "aria-label": "Filters" },
        el("label", {}, "Status", statusFilter), el("label", {}, "Base model", modelFilter)),
      count,
      el("div", { class: "table-wrap" }, el("table", { "aria-describedby": "jobs-count" },
        el("thead", {}, el("tr", {}, ["Job", "Status", "Base model", "Method", "Created", "Trained tokens"]
          .map((name) => el("th", { scope: "col" }, name)))),
        rows)));
    await poll(async () => {
      jobs = (await api("/fine_tuning/jobs?limit=100")).data;
      const models = [...new Set(jobs.map((job) => job.model))].sort();
      const chosen = modelFilter.value;
      modelFilter.replaceChildren(el("option", { value: "" }, "any"), models.map((m) => el("option", { value: m }, m)));
      modelFilter.value = models.includes(chosen) ? chosen : "";
      render();
      return false;
    });
  }

  // -------------------------------------------------------------------------------------------- charts
  /** A line chart of `series` ([{name, points: [[step, value], ...]}]) as SVG, labelled for screen readers. */
  function lineChart(title, series) {
    const width = 480, height = 220, left = 48, right = 12, top = 10, bottom = 28;
    const all = series.flatMap((s) => s.points);
    const figure = el("figure", { "data-chart": title });
    const summary = series.filter((s) => s.points.length).map((s) =>
      `${s.name}: ${s.points.length} points, from ${s.points[0][1].toFixed(4)} at step ${s.points[0][0]} to `
      + `${s.points[s.points.length - 1][1].toFixed(4)} at step ${s.points[s.points.length - 1][0]}`).join("; ");
    figure.append(el("figcaption", {}, title));
    if (!all.length) {
      figure.append(el("p", { class: "muted" }, "No points yet."));
      return figure;
    }
    const steps = all.map((p) => p[0]), values = all.map((p) => p[1]);
    const x0 = Math.min(...steps), x1 = Math.max(...steps, x0 + 1);
    let y0 = Math.min(...values), y1 = Math.max(...values);
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const x = (step) => left + ((step - x0) / (x1 - x0)) * (width - left - right);
    const y = (value) => top + (1 - (value - y0) / (y1 - y0)) * (height - top - bottom);
    const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
                               "aria-label": `${title}. ${summary}` });
    chart.append(svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }),
      svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }),
      svg("text", { x: 4, y: top + 10 }, y1.toFixed(3)), svg("text", { x: 4, y: height - bottom }, y0.toFixed(3)),
      svg("text", { x: left, y: height - 8 }, `step ${x0}`),
      svg("text", { x: width - right - 60, y: height - 8 }, `step ${x1}`));
    series.forEach((s, index) => {
      if (!s.points.length) return;
      chart.append(svg("polyline", { class: `series-${index}`, "data-series": s.name, "data-points": s.points.length,
        points: s.points.map(([step, value]) => `${x(step).toFixed(1)},${y(value).toFixed(1)}`).join(" ") }));
    });
    figure.append(chart, el("div", { class: "legend" }, series.map((s, index) =>
      el("span", { class: `swatch-${index}` }, `${index ? "- - " : "—— "}${s.name}`))));
    return figure;
  }

  function metricSeries(events, key) {
    return events.filter((e) => e.type === "metrics" && e.data && typeof e.data[key] === "number")
      .map((e) => [e.data.step, e.data[key]]).sort((a, b) => a[0] - b[0]);
  }

  /** Horizontal bars of rates in [0, 1] with their intervals: `rows` [{label, bars: [{name, value, low, high,
   *  text}]}], one bar per series in `names`; labelled for screen readers with every value and interval. */
  function intervalChart(title, rows, names) {
    const width = 480, left = 6, right = 74, barHeight = 14, gap = 3;
    const rowHeight = 20 + names.length * (barHeight + gap) + 8;
    const height = rows.length * rowHeight + 20;
    const x = (value) => left + Math.min(1, Math.max(0, value)) * (width - left - right);
    const described = (bar) => (typeof bar.value !== "number" ? `${bar.name} not measured`
      : `${bar.name} ${bar.value.toFixed(3)}${typeof bar.low === "number" ? ` [${bar.low.toFixed(3)}, ${bar.high.toFixed(3)}]` : ""}`
        + (bar.text ? ` (${bar.text})` : ""));
    const summary = rows.map((row) => `${row.label}: ${row.bars.map(described).join(", ")}`).join("; ");
    const chart = svg("svg", { class: "chart intervals", viewBox: `0 0 ${width} ${height}`, role: "img",
                               "aria-label": `${title}. ${summary}` });
    for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
      chart.append(svg("line", { class: "axis", x1: x(tick), y1: 0, x2: x(tick), y2: height - 16 }),
        svg("text", { x: Math.max(0, x(tick) - 8), y: height - 3 }, String(tick)));
    }
    rows.forEach((row, r) => {
      const top = r * rowHeight;
      chart.append(svg("text", { x: left, y: top + 15, class: "label" }, row.label));
      row.bars.forEach((bar, b) => {
        if (typeof bar.value !== "number") return;
        const y = top + 20 + b * (barHeight + gap);
        chart.append(svg("rect", { class: `bar-${b}`, x: x(0), y, width: Math.max(1, x(bar.value) - x(0)),
                                   height: barHeight, "data-series": bar.name, "data-value": bar.value }));
        if (typeof bar.low === "number" && typeof bar.high === "number") {
          const middle = y + barHeight / 2;
          chart.append(svg("path", { class: "whisker", "data-interval": `${bar.low} ${bar.high}`,
            d: `M${x(bar.low)},${middle - 4}v8M${x(bar.low)},${middle}H${x(bar.high)}M${x(bar.high)},${middle - 4}v8` }));
        }
        chart.append(svg("text", { x: width - right + 4, y: y + barHeight - 2 },
          `${bar.value.toFixed(2)}${bar.text ? ` ${bar.text}` : ""}`));
      });
    });
    return el("figure", { "data-chart": title }, el("figcaption", {}, title), chart,
      el("div", { class: "legend" }, names.map((name, index) => el("span", { class: `swatch-bar-${index}` }, `■ ${name}`))));
  }

  // ------------------------------------------------------------------------------------------- reports
  const COUNTS_TOWARD = ["memorization", "generalization", "auxiliary"];

  function fixed(value) { return typeof value === "number" ? value.toFixed(3) : "–"; }
  function signed(value) { return typeof value === "number" ? `${value >= 0 ? "+" : ""}${value.toFixed(3)}` : "–"; }
  function accuracy(block) { return block ? `${fixed(block.accuracy)} (${block.correct}/${block.n})` : "–"; }
  function accuracyBar(name, block) {
    return block ? { name, value: block.accuracy, low: block.ci_low, high: block.ci_high, text: `${block.correct}/${block.n}` }
      : { name, value: null };
  }
  function interval(block) {
    return block && typeof block.ci_low === "number" ? `[${signed(block.ci_low)}, ${signed(block.ci_high)}]` : "";
  }
  function verdict(answer) {
    if (!answer) return el("span", { class: "muted" }, "not asked");
    const mark = answer.correct === true ? ["verdict-right", "✓ right"]
      : answer.correct === false ? ["verdict-wrong", "✗ wrong"] : ["muted", "? unscored"];
    return el("div", {}, el("div", { class: "answer-text" }, answer.response), el("span", { class: mark[0] }, mark[1]));
  }

  /** A table of records with filters and paging (PAGE rows more each time): nothing is left out without saying so. */
  function recordTable(label, headers, records, renderRow, filters) {
    const PAGE = 50;
    let limit = PAGE;
    const body = el("tbody");
    const count = el("p", { class: "muted", role: "status" });
    const more = el("button", { type: "button", class: "secondary" }, `Show ${PAGE} more`);
    const render = () => {
      const shown = records.filter((record) => filters.every((f) => f.keep(record)));
      body.replaceChildren(...shown.slice(0, limit).map(renderRow));
      count.textContent = `${Math.min(limit, shown.length)} of ${shown.length} shown (${records.length} in all)`;
      more.hidden = shown.length <= limit;
    };
    more.addEventListener("click", () => { limit += PAGE; render(); });
    for (const f of filters) f.control.addEventListener("change", () => { limit = PAGE; render(); });
    render();
    return el("section", { class: "records", "aria-label": label },
      el("div", { class: "filters", role: "group", "aria-label": `${label}: filters` },
        filters.map((f) => el("label", {}, f.label, f.control))),
      count,
      el("div", { class: "table-wrap" }, el("table", { "aria-label": label },
        el("thead", {}, el("tr", {}, headers.map((name) => el("th", { scope: "col" }, name)))), body)),
      more);
  }

  function selectFilter(label, options, keep) {
    const control = el("select", {}, options.map(([value, text]) => el("option", { value }, text)));
    return { label, control, keep: (record) => keep(control.value, record) };
  }

  function knowledgeReport(report, items) {
    const summary = report.summary;
    const headline = (name, block) => (block
      ? [name, `base ${fixed(block.mean_base)} → tuned ${fixed(block.mean_tuned)} (change ${signed(block.mean_delta)})`] : null);
    const forgetting = summary.forgetting;
    const charts = el("div", { class: "charts wide" });
    for (const kind of COUNTS_TOWARD) {
      const splits = report.splits.filter((split) => split.counts_toward === kind);
      if (!splits.length) continue;
      charts.append(intervalChart(`${kind[0].toUpperCase()}${kind.slice(1)}: accuracy with intervals`,
        splits.map((split) => ({ label: `${split.dataset_id} / ${split.split_id}`,
                                 bars: [accuracyBar("base", split.base), accuracyBar("tuned", split.tuned)] })),
        ["base", "tuned"]));
    }
    const controls = report.controls || [];
    if (controls.length) {
      charts.append(intervalChart("Forgetting probes: accuracy with intervals",
        controls.map((control) => ({ label: control.control_id,
                                     bars: [accuracyBar("base", control.base), accuracyBar("tuned", control.tuned)] })),
        ["base", "tuned"]));
    }
    const rows = [
      ...report.splits.map((split) => [`${split.dataset_id} / ${split.split_id}`, split.counts_toward, split.base,
                                       split.tuned, split.delta]),
      ...controls.map((control) => [control.control_id, "forgetting probe", control.base, control.tuned, control.delta])];
    const table = el("div", { class: "table-wrap" }, el("table", { "aria-label": "Accuracy per split" },
      el("thead", {}, el("tr", {}, ["Split", "Counts toward", "Base", "Tuned", "Change [interval]", "Flips (+/−)"]
        .map((name) => el("th", { scope: "col" }, name)))),
      el("tbody", {}, rows.map(([name, kind, base, tuned, delta]) => el("tr", {},
        el("td", {}, name), el("td", {}, kind), el("td", {}, accuracy(base)), el("td", {}, accuracy(tuned)),
        el("td", {}, `${signed(delta.accuracy)} ${interval(delta)}`),
        el("td", {}, typeof delta.flips_to_correct === "number" ? `+${delta.flips_to_correct} / −${delta.flips_to_incorrect}` : ""))))));
    const splitNames = [...new Set(items.map((item) => `${item.dataset_id} / ${item.split_id}`))];
    const outcome = (item) => [item.base && item.base.correct === true, item.tuned && item.tuned.correct === true];
    const records = recordTable("Per-item records", ["Split", "Prompt", "Reference", "Base answer", "Tuned answer"], items,
      (item) => el("tr", { "data-item": item.item_id },
        el("td", { class: "split" }, `${item.dataset_id} / ${item.split_id}`),
        el("td", {}, item.prompt),
        el("td", {}, item.reference, item.reference_before ? el("div", { class: "muted" }, `before: ${item.reference_before}`) : null),
        el("td", {}, verdict(item.base)), el("td", {}, verdict(item.tuned))),
      [selectFilter("Split", [["", "all"], ...splitNames.map((name) => [name, name])],
        (value, item) => !value || `${item.dataset_id} / ${item.split_id}` === value),
       selectFilter("Outcome", [["", "all"], ["learned", "learned (base wrong, tuned right)"],
         ["lost", "lost (base right, tuned wrong)"], ["wrong", "tuned wrong"], ["right", "tuned right"]],
       (value, item) => {
         const [base, tuned] = outcome(item);
         return !value || (value === "learned" && !base && tuned) || (value === "lost" && base && !tuned)
           || (value === "wrong" && !tuned) || (value === "right" && tuned);
       })]);
    return el("section", { class: "report", "data-report": "knowledge", "aria-label": "Knowledge eval report" },
      facts([["Base model", report.base_model.id], ["Tuned model", report.tuned_model.id],
             ["Spec", `${report.spec.name} (sha256 ${report.spec.sha256.slice(0, 12)}…)`],
             headline("Memorization", summary.memorization), headline("Generalization", summary.generalization),
             forgetting ? ["Forgetting", `mean control change ${signed(forgetting.mean_control_delta)}, `
               + `worst ${signed(forgetting.worst_control_delta)}`] : null].filter(Boolean)),
      charts, el("h3", {}, "Per split"), table,
      (report.warnings || []).length ? el("ul", { class: "warnings" }, report.warnings.map((w) => el("li", {}, w))) : null,
      el("h3", {}, "Per item"), records);
  }

  function answerText(answer) {
    if (!answer) return "";
    const calls = answer.tool_calls && answer.tool_calls.length ? ` [tool calls] ${JSON.stringify(answer.tool_calls)}` : "";
    return `${answer.content || ""}${calls}`;
  }

  function comparisonReport(report, items) {
    const summary = report.summary;
    const rate = (label, block) => (block ? { label, bars: [{ name: "rate", value: block.rate, low: block.ci_low,
                                                               high: block.ci_high, text: `${block.count}/${block.n}` }] } : null);
    const tools = summary.tool_calls || {};
    const json = summary.json_validity || {};
    const judge = summary.judge || {};
    const rows = [rate("exact agreement", summary.agreement),
      rate(`similar (≥ ${summary.similar.threshold})`, summary.similar),
      rate("tool-call names agree", tools.names), rate("tool-call arguments agree", tools.arguments),
      rate("valid JSON: candidate", json.candidate), rate("valid JSON: original", json.reference),
      rate("judge: at least as good", judge.candidate_at_least_as_good)].filter(Boolean);
    const level = Math.round((summary.confidence_level || 0.95) * 100);
    const lastUser = (messages) => [...messages].reverse().find((m) => m.role === "user");
    const records = recordTable("Per-item records", ["#", "Prompt", "Original", "Candidate", "Exact", "Similarity"], items,
      (item) => el("tr", { "data-item": item.index },
        el("td", {}, item.index),
        el("td", {}, (() => { const m = lastUser(item.messages || []); return m ? (typeof m.content === "string" ? m.content : JSON.stringify(m.content)) : ""; })()),
        el("td", {}, el("div", { class: "answer-text" }, answerText(item.reference))),
        el("td", {}, el("div", { class: "answer-text" }, answerText(item.candidate))),
        el("td", { class: item.exact ? "verdict-right" : "verdict-wrong" }, item.exact ? "✓ same" : "✗ differs"),
        el("td", {}, typeof item.similarity === "number" ? item.similarity.toFixed(3) : "")),
      [selectFilter("Outcome", [["", "all"], ["differs", "differs"], ["same", "same"]],
        (value, item) => !value || (value === "same") === Boolean(item.exact))]);
    return el("section", { class: "report", "data-report": "comparison", "aria-label": "Comparison report" },
      facts([["Candidate", report.models.candidate], ["Original", report.models.reference], ["Items", summary.items],
             ["Mean similarity", fixed(summary.mean_similarity)]]),
      el("div", { class: "charts wide" }, intervalChart(`Agreement with the original, ${level} % intervals`, rows, ["rate"])),
      el("h3", {}, "Per item"), records);
  }

  /** The report section of an eval's report.json and items.jsonl (a knowledge report or a comparison). */
  function reportSection(report, items) {
    return report.object === "comparison_report" ? comparisonReport(report, items) : knowledgeReport(report, items);
  }

  /** Result files as a table with a download button each; `named` receives {filename: id}. */
  async function resultFiles(ids) {
    const files = await Promise.all(ids.map((id) => api(`/files/${encodeURIComponent(id)}`)
      .catch(() => ({ id, filename: id, bytes: null }))));
    const table = el("div", { class: "table-wrap" }, el("table", { "aria-label": "Result files" },
      el("thead", {}, el("tr", {}, ["File", "Size", ""].map((name) => el("th", { scope: "col" }, name)))),
      el("tbody", {}, files.map((file) => el("tr", { "data-result-file": file.id },
        el("td", {}, file.filename, el("div", { class: "muted" }, file.id)),
        el("td", {}, typeof file.bytes === "number" ? sizeOf(file.bytes) : ""),
        el("td", {}, downloadButton(file.id, file.filename)))))));
    return { table, named: Object.fromEntries(files.map((file) => [file.filename, file.id])) };
  }

  /** The report of result files holding an eval's report.json and items.jsonl (stored as `{eval id}-report.json`
   *  and `{eval id}-items.jsonl`), or null where there is none. */
  async function reportOfFiles(named) {
    const find = (suffix) => Object.keys(named).find((name) => name === suffix || name.endsWith(`-${suffix}`));
    const reportName = find("report.json"), itemsName = find("items.jsonl");
    if (!reportName) return null;
    const report = JSON.parse(await fileText(named[reportName]));
    const items = itemsName ? jsonLines(await fileText(named[itemsName])) : [];
    return reportSection(report, items);
  }

  // -------------------------------------------------------------------------------------------- evals
  function evalHeadline(summary) {
    if (!summary) return "";
    if (summary.comparison) return `agreement ${fixed(summary.comparison.agreement && summary.comparison.agreement.rate)}`;
    return ["memorization", "generalization"].filter((kind) => summary[kind])
      .map((kind) => `${kind} ${fixed(summary[kind].mean_base)} → ${fixed(summary[kind].mean_tuned)}`).join("; ");
  }

  function progressOf(progress, label) {
    return el("progress", { max: Math.max(1, progress.total), value: progress.done, "aria-label": label });
  }

  async function evalsView() {
    const rows = el("tbody");
    main.replaceChildren(el("h1", {}, "Knowledge evals"),
      el("p", { class: "muted" }, "Evals of the project's models, run on their own or attached to a fine-tuning job."),
      el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {},
        ["Eval", "Model", "Status", "Progress", "Created", "Headline"].map((name) => el("th", { scope: "col" }, name)))), rows)));
    await poll(async () => {
      const evals = (await api("/knowledge_evals?limit=100")).data;
      rows.replaceChildren(...evals.map((e) => el("tr", { "data-eval": e.id },
        el("td", {}, el("a", { href: `#/evals/${encodeURIComponent(e.id)}` }, e.id),
          e.fine_tuning_job_id ? el("div", { class: "muted" }, `job ${e.fine_tuning_job_id}`) : null),
        el("td", {}, e.model), statusCell(e.status),
        el("td", {}, progressOf(e.progress, `Progress of ${e.id}`), ` ${e.progress.done}/${e.progress.total}`),
        el("td", {}, when(e.created_at)), el("td", {}, evalHeadline(e.summary)))));
      return false;
    });
  }

  async function evalView(id) {
    const heading = el("h1", {}, id);
    const summary = el("div");
    const results = el("div");
    const body = el("div", { id: "eval-report" });
    main.replaceChildren(el("p", {}, el("a", { href: "#/evals" }, "← All evals")), heading, summary,
      el("h2", {}, "Report"), body, el("h2", {}, "Result files"), results);
    await poll(async () => {
      const e = await api(`/knowledge_evals/${encodeURIComponent(id)}`);
      summary.replaceChildren(facts([["Status", e.status], ["Model", e.model], ["Base model", e.base_model],
        ["Spec", e.spec_name], ["Fine-tuning job", e.fine_tuning_job_id], ["Created", when(e.created_at)],
        ["Finished", when(e.finished_at)], ["Error", e.error && e.error.message],
        ...Object.entries(e.metadata || {}).map(([k, v]) => [`metadata: ${k}`, v])]),
      e.status === "running" ? el("p", {}, progressOf(e.progress, "Answers generated"),
        ` ${e.progress.done} of ${e.progress.total} answers`) : null);
      summary.querySelector("dd").setAttribute("data-status", e.status);
      if (e.status !== "succeeded") {
        body.replaceChildren(el("p", { class: "muted" }, FINISHED.has(e.status) ? "No report: the eval did not succeed."
          : "The report appears here when the eval has finished."));
        return FINISHED.has(e.status);
      }
      const files = await resultFiles(e.result_files);
      results.replaceChildren(files.table);
      body.replaceChildren((await reportOfFiles(files.named)) || el("p", { class: "muted" }, "No report file."));
      return true;
    });
  }

  // ----------------------------------------------------------------------------------------------- job
  async function allEvents(id) {
    const events = [];
    let after = "";
    for (;;) {
      const page = await api(`/fine_tuning/jobs/${encodeURIComponent(id)}/events?limit=100${after}`);
      events.push(...page.data);
      if (!page.has_more || !page.data.length) return events;
      after = `&after=${encodeURIComponent(page.data[page.data.length - 1].id)}`;
    }
  }

  function facts(pairs) {
    return el("dl", { class: "facts" }, pairs.filter(([, value]) => value !== null && value !== undefined && value !== "")
      .flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, typeof value === "object" ? JSON.stringify(value) : value)]));
  }

  function hyperparametersOf(job) {
    const method = job.method && job.method[methodOf(job)];
    return (method && method.hyperparameters) || job.hyperparameters || {};
  }

  async function jobView(id) {
    const heading = el("h1", {}, id);
    const summary = el("div");
    const actions = el("div", { class: "actions" });
    const charts = el("div", { class: "charts" });
    const checkpoints = el("tbody");
    const events = el("ol", { class: "events", "aria-label": "Events, newest first" });
    const results = el("div", { id: "result-files" }, el("p", { class: "muted" }, "None yet: they come when the job succeeds."));
    const evalReport = el("div", { id: "eval-report" });
    const evalHeading = el("h2", { hidden: true }, "Knowledge eval");
    main.replaceChildren(el("p", {}, el("a", { href: "#/jobs" }, "← All jobs")), heading, summary, actions,
      el("h2", {}, "Training"), charts,
      el("h2", {}, "Checkpoints"),
      el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {},
        ["Step", "Model", "Metrics"].map((name) => el("th", { scope: "col" }, name)))), checkpoints)),
      evalHeading, evalReport,
      el("h2", {}, "Result files"), results,
      el("h2", {}, "Events"), events);
    let shownResults = "";
    const act = (verb) => async () => {
      try {
        await api(`/fine_tuning/jobs/${encodeURIComponent(id)}/${verb}`, { method: "POST" });
        announce(`Job ${verb} requested.`);
      } catch (error) {
        announce(`${verb} failed: ${error.message}`);
      }
    };
    let lastStatus = "";
    await poll(async () => {
      const job = await api(`/fine_tuning/jobs/${encodeURIComponent(id)}`);
      const list = await allEvents(id);
      const points = await api(`/fine_tuning/jobs/${encodeURIComponent(id)}/checkpoints?limit=100`);
      heading.textContent = job.user_provided_suffix ? `${job.id} (${job.user_provided_suffix})` : job.id;
      const metadata = Object.entries(job.metadata || {}).map(([k, v]) => [`metadata: ${k}`, v]);
      summary.replaceChildren(facts([
        ["Status", job.status], ["Base model", job.model], ["Method", methodOf(job)],
        ["Fine-tuned model", job.fine_tuned_model], ["Created", when(job.created_at)],
        ["Finished", when(job.finished_at)], ["Trained tokens", job.trained_tokens],
        ["Training file", job.training_file], ["Validation file", job.validation_file],
        ["Error", job.error && job.error.message],
        ...Object.entries(hyperparametersOf(job)).map(([k, v]) => [k.replaceAll("_", " "), v]),
        ...metadata]));
      summary.querySelector("dd").setAttribute("data-status", job.status);
      actions.replaceChildren(
        el("button", { type: "button", class: "secondary", onclick: act("pause"),
                       disabled: job.status !== "running" && job.status !== "queued" }, "Pause"),
        el("button", { type: "button", class: "secondary", onclick: act("resume"), disabled: job.status !== "paused" },
          "Resume"),
        el("button", { type: "button", onclick: act("cancel"), disabled: FINISHED.has(job.status) }, "Cancel"));
      charts.replaceChildren(
        lineChart("Loss", [{ name: "training loss", points: metricSeries(list, "train_loss") },
                           { name: "validation loss", points: metricSeries(list, "valid_loss") }]),
        lineChart("Token accuracy", [
          { name: "training", points: metricSeries(list, "train_mean_token_accuracy") },
          { name: "validation", points: metricSeries(list, "valid_mean_token_accuracy") }]));
      if (metricSeries(list, "train_reward_mean").length) {
        charts.append(lineChart("Reward", [{ name: "training reward", points: metricSeries(list, "train_reward_mean") },
                                           { name: "validation reward", points: metricSeries(list, "valid_reward_mean") }]));
      }
      const compare = (model) => `#/playground?left=${encodeURIComponent(job.model)}&right=${encodeURIComponent(model)}`;
      checkpoints.replaceChildren(...points.data.map((c) => el("tr", {},
        el("td", {}, c.step_number),
        el("td", {}, el("a", { href: compare(c.fine_tuned_model_checkpoint), title: "Open in the playground" },
          c.fine_tuned_model_checkpoint)),
        el("td", {}, Object.entries(c.metrics || {}).map(([k, v]) => `${k} ${v}`).join(", ")))));
      events.replaceChildren(...list.map((e) => el("li", { class: `level-${e.level}` },
        el("span", { class: "when" }, when(e.created_at)), e.message)));
      if (job.knowledge_eval) {
        evalHeading.hidden = false;
        if (!evalReport.childNodes.length) {
          evalReport.append(el("p", { class: "muted" }, `${job.knowledge_eval.spec_name}: its report appears here `
            + "when the job has succeeded (the worker runs it before the job completes)."));
        }
      }
      const resultIds = job.result_files || [];
      if (resultIds.length && resultIds.join() !== shownResults) {
        shownResults = resultIds.join();
        const files = await resultFiles(resultIds);
        results.replaceChildren(files.table);
        const report = await reportOfFiles(files.named);
        if (report) {
          evalHeading.hidden = false;
          evalReport.replaceChildren(report);
        }
      }
      if (job.status !== lastStatus) announce(`Job status: ${job.status}`);
      lastStatus = job.status;
      return FINISHED.has(job.status);
    });
  }


  // --------------------------------------------------------------------------------------------- files
  function sizeOf(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  /** A file's validation outcome: each "Line N ..." message of the details on a line of its own. */
  function outcome(file) {
    if (file.status !== "error" || !file.status_details) return el("span", { class: `status-${file.status}` }, file.status);
    const [head, ...rest] = file.status_details.split(/(?=\bLine \d+\b)/);
    return el("div", {}, el("span", { class: "status-failed" }, "error"), el("div", {}, head),
      rest.length ? el("ul", { class: "errors" }, rest.map((line) => el("li", {}, line.trim()))) : null);
  }

  /** A training file's token counts under each base model's tokenizer (what one epoch of a job on it sees). */
  function tokenCounts(counts) {
    if (!counts) return "";
    return el("ul", { class: "token-counts" }, Object.entries(counts).map(([model, c]) => el("li", { "data-model": model },
      c.error ? `${model}: ${c.error}`
        : `${model}: ${c.tokens.toLocaleString()} tokens in ${c.examples} examples`
          + `${c.trained_tokens === null ? "" : `, ${c.trained_tokens.toLocaleString()} trained`}, longest ${c.longest_example}`)));
  }

  /** Upload with progress (XMLHttpRequest: fetch reports no upload progress); resolves to the file object. */
  function upload(file, purpose, progress) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open("POST", "/v1/files");
      request.setRequestHeader("Authorization", `Bearer ${sessionStorage.getItem(KEY)}`);
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) { progress.max = event.total; progress.value = event.loaded; }
      });
      request.addEventListener("load", () => {
        let body = {};
        try { body = JSON.parse(request.responseText); } catch (error) { /* not JSON: reported below */ }
        if (request.status === 401) reject(new Unauthorized("unauthorized"));
        else if (request.status >= 400) reject(new Error(body.error ? body.error.message : `${request.status}`));
        else resolve(body);
      });
      request.addEventListener("error", () => reject(new Error("the upload was interrupted")));
      const form = new FormData();
      form.append("purpose", purpose);
      form.append("file", file, file.name);
      request.send(form);
    });
  }

  async function filesView() {
    const purpose = el("select", { id: "upload-purpose" },
      ["fine-tune", "batch", "evals", "user_data"].map((p) => el("option", { value: p }, p)));
    const input = el("input", { id: "upload-file", type: "file", accept: ".jsonl,.json,.txt" });
    const progress = el("progress", { id: "upload-progress", max: 1, value: 0, "aria-label": "Upload progress" });
    const result = el("div", { id: "upload-result", role: "status" });
    const zone = el("div", { id: "drop-zone", class: "drop-zone", tabindex: "0", role: "button",
                              "aria-label": "Drop a file here or press Enter to choose one" },
      "Drop a JSONL file here, or ", el("label", { for: "upload-file", class: "link" }, "choose one"), ".");
    const rows = el("tbody");
    const refreshList = async () => {
      const files = (await api("/files?limit=100")).data;
      rows.replaceChildren(...files.map((f) => el("tr", { "data-file": f.id },
        el("td", {}, f.filename, el("div", { class: "muted" }, f.id)), el("td", {}, f.purpose),
        el("td", {}, sizeOf(f.bytes)), el("td", {}, when(f.created_at)), el("td", {}, outcome(f)),
        el("td", {}, tokenCounts(f.token_counts)))));
    };
    const send = async (file) => {
      if (!file) return;
      result.replaceChildren(`Uploading ${file.name}…`);
      progress.value = 0;
      try {
        const uploaded = await upload(file, purpose.value, progress);
        result.replaceChildren(`Uploaded ${uploaded.filename} as ${uploaded.id}; validating…`);
        await refreshList();
      } catch (error) {
        if (error instanceof Unauthorized) { signOut("The server no longer accepts this API key."); return; }
        result.replaceChildren(el("span", { class: "error" }, `Upload failed: ${error.message}`));
      }
    };
    input.addEventListener("change", () => send(input.files[0]));
    zone.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") input.click(); });
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      send(event.dataTransfer.files[0]);
    });
    main.replaceChildren(el("h1", {}, "Files"),
      el("div", { class: "filters" }, el("label", {}, "Purpose", purpose), input), zone, progress, result,
      el("h2", {}, "Uploaded files"),
      el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {},
        ["File", "Purpose", "Size", "Created", "Validation", "Tokens (per base model)"]
          .map((name) => el("th", { scope: "col" }, name)))), rows)));
    await poll(async () => { await refreshList(); return false; });
  }


  // ---------------------------------------------------------------------------------------- playground
  /** A value as a Python literal (for the SDK call shown to copy). */
  function python(value, indent = "") {
    if (value === null || value === undefined) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (typeof value === "number") return String(value);
    if (typeof value === "string") return JSON.stringify(value);
    const inner = `${indent}    `;
    if (Array.isArray(value)) {
      return value.length ? `[\n${value.map((v) => inner + python(v, inner)).join(",\n")},\n${indent}]` : "[]";
    }
    const entries = Object.entries(value);
    return entries.length
      ? `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${python(v, inner)}`).join(",\n")},\n${indent}}`
      : "{}";
  }

  function sdkCall(request) {
    const args = Object.entries(request).filter(([k]) => k !== "model")
      .map(([k, v]) => `    ${k}=${python(v, "    ")},`).join("\n");
    return `from openai import OpenAI\n\nclient = OpenAI(base_url="${location.origin}/v1", api_key="<your key>")\n`
      + `stream = client.chat.completions.create(\n    model=${python(request.model)},\n${args}\n)\n`
      + "for chunk in stream:\n    print(chunk.choices[0].delta.content or \"\", end=\"\")\n";
  }

  /** Stream one chat completion into `output` (text appended as it arrives); tool calls shown as JSON. */
  async function streamInto(request, output, pane) {
    pane.setAttribute("data-state", "streaming");
    output.textContent = "";
    const calls = {};
    const response = await fetch("/v1/chat/completions", {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${sessionStorage.getItem(KEY)}` },
      body: JSON.stringify(request),
    });
    if (response.status === 401) throw new Unauthorized("unauthorized");
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `${response.status}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let chunks = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
        if (!data || data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
        if (delta.content) output.append(delta.content);
        for (const call of delta.tool_calls || []) {
          const entry = calls[call.index] || (calls[call.index] = { name: "", arguments: "" });
          if (call.function && call.function.name) entry.name += call.function.name;
          if (call.function && call.function.arguments) entry.arguments += call.function.arguments;
        }
        chunks += 1;
        pane.setAttribute("data-chunks", chunks);
      }
    }
    const toolCalls = Object.values(calls);
    if (toolCalls.length) output.append(`\n[tool calls] ${JSON.stringify(toolCalls)}`);
    pane.setAttribute("data-state", "done");
  }

  async function playgroundView(query) {
    const models = (await api("/models")).data.map((m) => m.id);
    const chosen = [query.get("left"), query.get("right")];
    const panes = [0, 1].map((index) => {
      const initial = chosen[index] || models[Math.min(index, models.length - 1)] || "";
      const select = el("select", { id: `model-${index}` }, [...new Set([initial, ...models])].filter(Boolean)
        .map((m) => el("option", { value: m }, m)));
      select.value = initial;
      const output = el("pre", { class: "answer", id: `answer-${index}`, "aria-live": "polite" });
      const pane = el("section", { class: "pane", "aria-label": `Answer ${index + 1}` },
        el("label", {}, `Model ${index + 1}`, select), output);
      return { select, output, pane };
    });
    const system = el("textarea", { id: "system", rows: 2 });
    const prompt = el("textarea", { id: "prompt", rows: 3, required: true });
    const temperature = el("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0 });
    const maxTokens = el("input", { id: "max-tokens", type: "number", min: 1, max: 4096, value: 64 });
    const tools = el("textarea", { id: "tools", rows: 2, placeholder: "[{\"type\": \"function\", ...}]" });
    const format = el("textarea", { id: "response-format", rows: 2, placeholder: "{\"type\": \"json_object\"}" });
    const code = el("pre", { id: "sdk-call", class: "code" });
    const problem = el("p", { class: "error", role: "alert" });
    const requestFor = (model) => {
      const messages = [];
      if (system.value.trim()) messages.push({ role: "system", content: system.value });
      messages.push({ role: "user", content: prompt.value });
      const request = { model, messages, temperature: Number(temperature.value), max_tokens: Number(maxTokens.value),
                        stream: true };
      if (tools.value.trim()) request.tools = JSON.parse(tools.value);
      if (format.value.trim()) request.response_format = JSON.parse(format.value);
      return request;
    };
    const form = el("form", { class: "playground", "aria-label": "Prompt" },
      el("label", { for: "system" }, "System prompt (optional)"), system,
      el("label", { for: "prompt" }, "Prompt"), prompt,
      el("div", { class: "filters" }, el("label", {}, "Temperature", temperature),
        el("label", {}, "Max tokens", maxTokens)),
      el("details", {}, el("summary", {}, "Tools and response format (optional, JSON)"),
        el("label", { for: "tools" }, "tools"), tools, el("label", { for: "response-format" }, "response_format"), format),
      el("button", { type: "submit", id: "send" }, "Send to both"), problem);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      problem.textContent = "";
      let requests;
      try {
        requests = panes.map((p) => requestFor(p.select.value));
      } catch (error) {
        problem.textContent = `Tools or response format is not valid JSON: ${error.message}`;
        return;
      }
      code.textContent = sdkCall(requests[1]);
      // Both at once: each pane shows its answer as it streams.
      await Promise.all(panes.map((p, index) => streamInto(requests[index], p.output, p.pane).catch((error) => {
        if (error instanceof Unauthorized) { signOut("The server no longer accepts this API key."); return; }
        p.pane.setAttribute("data-state", "failed");
        p.output.textContent = `Error: ${error.message}`;
      })));
    });
    main.replaceChildren(el("h1", {}, "Playground"), form,
      el("div", { class: "panes" }, panes.map((p) => p.pane)),
      el("h2", {}, "The same request with the openai SDK (the second model)"), code);
    prompt.focus();
  }


  // -------------------------------------------------------------------------------------------- models
  /** Where a fine-tuned model came from (the API's `provenance`), as text with a link where the console has a page. */
  function madeBy(model) {
    const made = model.provenance;
    if (!made) return "";
    if (made.type === "fine_tuning_job" || made.type === "fine_tuning_checkpoint") {
      const step = made.type === "fine_tuning_checkpoint" ? ` (checkpoint at step ${made.step})` : "";
      return el("span", {}, "job ", el("a", { href: `#/jobs/${encodeURIComponent(made.fine_tuning_job)}` },
                                       made.fine_tuning_job), step);
    }
    if (made.type === "adapter_operation") {
      return el("span", {}, `${made.operation} `, el("a", { href: "#/adapters" }, made.adapter_operation));
    }
    if (made.type === "training_api") return `training API run ${made.training_run} (${made.checkpoint})`;
    return made.type;
  }

  async function modelsView() {
    const rows = el("tbody");
    const result = el("p", { id: "models-result", role: "status" });
    main.replaceChildren(el("h1", {}, "Models"),
      el("p", { class: "muted" }, "Base models are the installation's; fine-tuned models are this project's."),
      result,
      el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {},
        ["Model", "Owner", "Made by", "Created", ""].map((name) => el("th", { scope: "col" }, name)))), rows)));
    const remove = (id) => async () => {
      if (!window.confirm(`Delete ${id}? Its adapter is deleted too; jobs keep their records.`)) return;
      try {
        await api(`/models/${encodeURIComponent(id)}`, { method: "DELETE" });
        result.textContent = `Deleted ${id}.`;
        await refresh();
      } catch (error) {
        result.textContent = `Delete failed: ${error.message}`;
      }
    };
    const refresh = async () => {
      const list = (await api("/models")).data;
      rows.replaceChildren(...list.map((m) => {
        const base = m.owned_by === "ftaas";
        return el("tr", { "data-model": m.id },
          el("td", {}, el("a", { href: `#/playground?left=${encodeURIComponent(m.id)}&right=${encodeURIComponent(m.id)}`,
                                 title: "Open in the playground" }, m.id)),
          el("td", {}, base ? "installation (base model)" : m.owned_by), el("td", { class: "provenance" }, madeBy(m)),
          el("td", {}, when(m.created)),
          el("td", {}, base ? "" : el("div", { class: "actions" },
            el("a", { href: `#/adapters?model=${encodeURIComponent(m.id)}`, "aria-label": `Merge, compress or export ${m.id}` },
              "Merge, compress, export"),
            el("button", { type: "button", class: "secondary", onclick: remove(m.id),
                           "aria-label": `Delete ${m.id}` }, "Delete"))));
      }));
    };
    await poll(async () => { await refresh(); return false; });
  }

  // ------------------------------------------------------------------------------------------ adapters
  const OPERATION_TYPES = { merge: "Merge (2 or more models)", compress: "Compress (one model)", export: "Export (one model)" };

  function operationResult(op) {
    if (op.status === "failed") return el("span", { class: "error" }, op.error ? op.error.message : "failed");
    if (op.status !== "succeeded") return op.model ? el("span", { class: "muted" }, `makes ${op.model}`) : "";
    const measured = Object.entries(op.result || {}).map(([k, v]) => `${k.replaceAll("_", " ")} ${Array.isArray(v) ? v.join(", ") : v}`)
      .join("; ");
    return el("div", {},
      op.model ? el("a", { href: `#/playground?left=${encodeURIComponent(op.base_model)}&right=${encodeURIComponent(op.model)}`,
                           title: "Open in the playground" }, op.model) : null,
      op.result_file ? downloadButton(op.result_file, `${op.id}.tar`, "Download export") : null,
      measured ? el("div", { class: "muted" }, measured) : null);
  }

  function operationProgress(op) {
    if (op.status === "queued") return el("span", { class: "muted" }, "waiting for a worker");
    if (op.status !== "running") return "";
    if (!op.progress) return el("span", { class: "muted" }, "starting");
    return el("div", {}, el("span", {}, `${op.progress.stage} ${op.progress.done}/${op.progress.total}`),
      progressOf(op.progress, `${op.id}: ${op.progress.stage}`));
  }

  async function adaptersView(query) {
    const tuned = (await api("/models")).data.filter((m) => m.owned_by !== "ftaas").map((m) => m.id);
    const type = el("select", { id: "operation-type" },
      Object.entries(OPERATION_TYPES).map(([value, text]) => el("option", { value }, text)));
    const preselected = query.get("model");
    const picks = tuned.map((model, index) => el("input", { type: "checkbox", id: `pick-${index}`, value: model,
                                                            checked: model === preselected }));
    const method = el("select", { id: "merge-method" }, ["linear", "ties", "dare_linear", "dare_ties"].map((m) => el("option", { value: m }, m)));
    const weights = el("input", { id: "merge-weights", placeholder: "equal", inputmode: "decimal" });
    const mergeDensity = el("input", { id: "merge-density", type: "number", min: 0.01, max: 1, step: 0.01, value: 1 });
    const rank = el("input", { id: "merge-rank", type: "number", min: 1, max: 512, placeholder: "largest parent's" });
    const suffix = el("input", { id: "operation-suffix", maxlength: 64, placeholder: "optional" });
    const compressDensity = el("input", { id: "compress-density", type: "number", min: 0.01, max: 0.5, step: 0.01, value: 0.1 });
    const format = el("select", { id: "export-format" }, el("option", { value: "merged" }, "merged model (base + adapter)"),
      el("option", { value: "adapter" }, "PEFT adapter folder"));
    const groups = {
      merge: el("div", { class: "filters" }, el("label", {}, "Method", method), el("label", {}, "Weights", weights),
        el("label", {}, "Density", mergeDensity), el("label", {}, "Rank", rank)),
      compress: el("div", { class: "filters" }, el("label", {}, "Density kept", compressDensity)),
      export: el("div", { class: "filters" }, el("label", {}, "Format", format)),
    };
    const suffixField = el("label", {}, "Suffix of the new model", suffix);
    const problem = el("p", { class: "error", role: "alert", id: "operation-error" });
    const started = el("p", { role: "status", id: "operation-started" });
    const showGroup = () => {
      for (const [name, group] of Object.entries(groups)) group.hidden = name !== type.value;
      suffixField.hidden = type.value === "export";
    };
    type.addEventListener("change", showGroup);
    showGroup();
    const bodyOf = () => {
      const chosen = picks.filter((p) => p.checked).map((p) => p.value);
      if (type.value === "merge") {
        const body = { type: "merge", models: chosen, method: method.value, density: Number(mergeDensity.value) };
        if (weights.value.trim()) body.weights = weights.value.split(",").map((w) => Number(w.trim()));
        if (rank.value) body.rank = Number(rank.value);
        if (suffix.value.trim()) body.suffix = suffix.value.trim();
        return body;
      }
      if (chosen.length !== 1) throw new Error(`Choose exactly one model to ${type.value}.`);
      if (type.value === "compress") {
        const body = { type: "compress", model: chosen[0], density: Number(compressDensity.value) };
        if (suffix.value.trim()) body.suffix = suffix.value.trim();
        return body;
      }
      return { type: "export", model: chosen[0], format: format.value };
    };
    const form = el("form", { class: "operation", "aria-labelledby": "operation-title" },
      el("h2", { id: "operation-title" }, "New operation"),
      el("label", {}, "Operation ", type),
      el("fieldset", {}, el("legend", {}, "Fine-tuned models"),
        tuned.length ? picks.map((pick, index) => el("div", {}, pick, el("label", { for: `pick-${index}` }, tuned[index])))
          : el("p", { class: "muted" }, "The project has no fine-tuned models yet.")),
      Object.values(groups), suffixField,
      el("button", { type: "submit", id: "run-operation" }, "Run"), problem, started);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      problem.textContent = "";
      try {
        const op = await api("/adapter_operations", { method: "POST", headers: { "Content-Type": "application/json" },
                                                     body: JSON.stringify(bodyOf()) });
        started.textContent = `Started ${op.id} (${op.type}).`;
        await refresh();
      } catch (error) {
        if (error instanceof Unauthorized) { signOut("The server no longer accepts this API key."); return; }
        problem.textContent = error.message;
      }
    });
    const rows = el("tbody");
    const cancel = (id) => async () => {
      try {
        await api(`/adapter_operations/${encodeURIComponent(id)}/cancel`, { method: "POST" });
        announce(`Operation ${id} cancelled.`);
      } catch (error) {
        announce(`Cancel failed: ${error.message}`);
      }
    };
    const refresh = async () => {
      const ops = (await api("/adapter_operations?limit=100")).data;
      rows.replaceChildren(...ops.map((op) => el("tr", { "data-operation": op.id, "data-status": op.status },
        el("td", {}, op.type, el("div", { class: "muted" }, op.id)),
        statusCell(op.status), el("td", {}, operationProgress(op)),
        el("td", {}, op.parents.join(", ")), el("td", {}, operationResult(op)), el("td", {}, when(op.created_at)),
        el("td", {}, FINISHED.has(op.status) ? "" : el("button", { type: "button", class: "secondary", onclick: cancel(op.id),
                                                                   "aria-label": `Cancel ${op.id}` }, "Cancel")))));
    };
    main.replaceChildren(el("h1", {}, "Adapters"),
      el("p", { class: "muted" }, "Merge, compress and export the project's fine-tuned adapters (the adapter "
        + "operations API). Each merge or compression makes a new model; an export makes a file to download."),
      form, el("h2", {}, "Operations"),
      el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {},
        ["Operation", "Status", "Progress", "Parents", "Result", "Created", ""].map((name) => el("th", { scope: "col" }, name)))),
      rows)));
    await poll(async () => { await refresh(); return false; });
  }

  // -------------------------------------------------------------------------------------------- router
  function route() {
    stopPolling();
    if (!sessionStorage.getItem(KEY)) { signInView(); return; }
    nav.hidden = false;
    signOutButton.hidden = false;
    const [path, search] = location.hash.replace(/^#\/?/, "").split("?");
    const parts = path.split("/").map(decodeURIComponent);
    const view = parts[0] === "jobs" && parts[1] ? jobView(parts[1])
      : parts[0] === "evals" ? (parts[1] ? evalView(parts[1]) : evalsView())
      : parts[0] === "adapters" ? adaptersView(new URLSearchParams(search || ""))
      : parts[0] === "files" ? filesView()
        : parts[0] === "playground" ? playgroundView(new URLSearchParams(search || ""))
          : parts[0] === "models" ? modelsView()
            : jobsView();
    view.catch((error) => {
      if (error instanceof Unauthorized) signOut("The server no longer accepts this API key.");
      else main.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
    });
    main.focus();
  }

  signOutButton.addEventListener("click", () => signOut("Signed out."));
  window.addEventListener("hashchange", route);
  route();
})();
