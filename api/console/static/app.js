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

  /** Run `refresh` now and every POLL_MS until the view changes or it returns true (nothing more to follow). */
  function poll(refresh) {
    let active = true;
    let handle = null;
    const tick = async () => {
      if (!active) return;
      let done = false;
      try {
        done = await refresh();
      } catch (error) {
        if (error instanceof Unauthorized) { signOut("The server no longer accepts this API key."); return; }
        announce(`Refresh failed: ${error.message}`);
      }
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
    main.replaceChildren(el("p", {}, el("a", { href: "#/jobs" }, "← All jobs")), heading, summary, actions,
      el("h2", {}, "Training"), charts,
      el("h2", {}, "Checkpoints"),
      el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {},
        ["Step", "Model", "Metrics"].map((name) => el("th", { scope: "col" }, name)))), checkpoints)),
      el("h2", {}, "Events"), events);
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
        ["Error", job.error && job.error.message], ["Result files", (job.result_files || []).join(", ")],
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
        el("td", {}, sizeOf(f.bytes)), el("td", {}, when(f.created_at)), el("td", {}, outcome(f)))));
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
        ["File", "Purpose", "Size", "Created", "Validation"].map((name) => el("th", { scope: "col" }, name)))), rows)));
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
  async function modelsView() {
    const rows = el("tbody");
    const result = el("p", { id: "models-result", role: "status" });
    main.replaceChildren(el("h1", {}, "Models"),
      el("p", { class: "muted" }, "Base models are the installation's; fine-tuned models are this project's."),
      result,
      el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {},
        ["Model", "Owner", "Created", ""].map((name) => el("th", { scope: "col" }, name)))), rows)));
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
          el("td", {}, base ? "installation (base model)" : m.owned_by), el("td", {}, when(m.created)),
          el("td", {}, base ? "" : el("button", { type: "button", class: "secondary", onclick: remove(m.id),
                                                 "aria-label": `Delete ${m.id}` }, "Delete")));
      }));
    };
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
