// The jobs pages. "/jobs" lists jobs and refreshes itself while any of them is unfinished; "/jobs/:id"
// shows one job and follows it live through its event stream (GET /v1/jobs/{id}/events): progress,
// curves that grow epoch by epoch, an experiment's cells, and the final state.
import { api, ApiError, duration, errorBox, h, lineChart, navigate, PALETTE, percent, progressBar, route, stream, when } from "./lib.js";
import { datasetLabel } from "./models.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const PAGE_SIZE = 25;
const LIST_REFRESH_MS = 2000;

// --- how a job reads in a table --------------------------------------------------------------------

const shortId = (id) => id.slice(0, 8);

function statusBadge(status) {
  return h("span", { class: `status ${status}`, "data-status": status }, status);
}

/** The model(s) a job trains: "vgg", or "vgg, resnet × vanilla, noisy" for an experiment's grid. */
function trains(request) {
  if (request.model) return request.model;
  const models = (request.models ?? []).join(", ");
  return request.conditions ? `${models} × ${request.conditions.join(", ")}` : models;
}

/** The images in a few words: "MNIST 0 vs 1, 32 px, noisy". An experiment sets the condition per cell. */
function describeDataset(dataset, { condition = true } = {}) {
  let text = datasetLabel(dataset);
  if (dataset.image_size) text += `, ${dataset.image_size} px`;
  if (condition && dataset.condition && dataset.condition !== "vanilla") text += `, ${dataset.condition}`;
  return text;
}

/** Seconds left, extrapolated from the time per unit of work so far (the list has no event stream). */
function estimateEta(job) {
  const { epoch, epochs } = job.progress;
  if (job.status !== "running" || !job.started_at || !epoch || !epochs) return null;
  const elapsed = (Date.now() - Date.parse(job.started_at)) / 1000;
  return Math.max(0, (elapsed / epoch) * (epochs - epoch));
}

/** The progress bar, or a word while there is nothing to measure yet (`epochs` is known after one unit). */
function progressOf(job, eta) {
  if (job.status === "queued") return h("span", { class: "muted" }, "waiting for a worker");
  if (!job.progress.epochs) return h("span", { class: "muted" }, FINISHED.has(job.status) ? "-" : "starting...");
  return progressBar(job.progress, job.status === "running" ? eta : null);
}

// --- "/jobs": the list -----------------------------------------------------------------------------

function jobRow(job) {
  return h("tr", { "data-job-id": job.id },
    h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "job-id", title: job.id }, shortId(job.id))),
    h("td", {}, job.kind),
    h("td", {}, trains(job.request)),
    h("td", {}, describeDataset(job.request.dataset, { condition: job.kind === "train" })),
    h("td", {}, statusBadge(job.status)),
    h("td", { class: "progress-cell" }, progressOf(job, estimateEta(job))),
    h("td", {}, when(job.created_at)));
}

function listQuery(status, offset) {
  const query = new URLSearchParams({ limit: PAGE_SIZE, offset });
  if (status) query.set("status", status);
  return query;
}

function pager({ total, offset, limit }, status) {
  const link = (to, text) => h("a", { href: `#/jobs?${listQuery(status, to)}` }, text);
  const last = Math.min(offset + limit, total);
  return [
    offset > 0 ? link(Math.max(0, offset - limit), "< newer") : null,
    h("span", { class: "muted" }, total ? ` ${offset + 1}-${last} of ${total} ` : ""),
    last < total ? link(offset + limit, "older >") : null,
  ].filter(Boolean);
}

function statusFilter(status) {
  const select = h("select", { id: "jobs-status", onchange: () => navigate(`#/jobs?${listQuery(select.value, 0)}`) },
    h("option", { value: "" }, "all"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  return h("label", {}, "Status ", select);
}

route("/jobs", async ({ query, signal }) => {
  const status = query.get("status") ?? "";
  const offset = Number(query.get("offset")) || 0;
  const rows = h("tbody");
  const footer = h("p", { id: "jobs-pager" });
  const problem = h("div");
  let timer = null;
  signal.addEventListener("abort", () => clearTimeout(timer));

  // Replace the rows in place, and come back while something can still change.
  async function refresh() {
    const page = await api(`/v1/jobs?${listQuery(status, offset)}`, { signal });
    rows.replaceChildren(...page.items.map(jobRow));
    if (!page.items.length) {
      rows.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs here. ", h("a", { href: "#/submit" }, "Submit one."))));
    }
    footer.replaceChildren(...pager(page, status));
    problem.replaceChildren();
    return page.items.some((job) => !FINISHED.has(job.status));
  }

  function schedule() {
    timer = setTimeout(async () => {
      try {
        if (await refresh()) schedule();
      } catch (error) {
        if (signal.aborted) return;
        problem.replaceChildren(errorBox(error)); // keep the last rows on screen and try again
        schedule();
      }
    }, LIST_REFRESH_MS);
  }

  if (await refresh()) schedule(); // a failure of the first load is the router's error page
  const head = ["Job", "Kind", "Trains", "Dataset", "Status", "Progress", "Created"].map((title) => h("th", {}, title));
  return [
    h("div", { class: "row page-head" }, h("h1", {}, "Jobs"), statusFilter(status), h("a", { href: "#/submit" }, "Submit a job")),
    problem,
    h("table", { id: "jobs-table" }, h("thead", {}, h("tr", {}, head)), rows),
    footer,
  ];
}, "Jobs");

// --- "/jobs/:id": following one job ----------------------------------------------------------------

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

/**
 * Read the job's event stream until its `end` event. A stream that drops before then (a proxy timing
 * out, the API restarting) is opened again after the last epoch received, waiting longer each time.
 */
async function follow(jobId, afterEpoch, onEvent, signal) {
  let last = afterEpoch, ended = false, wait = 1000;
  const handle = (type, data) => {
    if (type === "epoch") last = data.index;
    if (type === "end") ended = true;
    wait = 1000;
    onEvent(type, data);
  };
  while (!ended && !signal.aborted) {
    try {
      await stream(`/v1/jobs/${encodeURIComponent(jobId)}/events`, handle, { signal, lastEventId: last || null });
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status < 500) throw error; // no such job, no access: retrying cannot help
    }
    if (!ended) {
      await sleep(wait, signal);
      wait = Math.min(2 * wait, 10_000);
    }
  }
}

// Curves. A train job draws one series per metric; an experiment one series per cell, against the cell's
// own epoch, coloured by its grid position so a cell has the same colour in every chart. VAE losses (sums
// over pixels) are orders of magnitude above a classifier's, so they get their own chart.

const isVae = (record) => record.phase === "vae";

function points(records, key, x = (r) => r.epoch) {
  return records.filter((r) => r[key] != null).map((r) => [x(r), r[key]]);
}

function chartCard(name, title, series, options = {}) {
  const drawn = series.filter((se) => se.points.length);
  if (!drawn.length) return null;
  return h("div", { class: "card", "data-chart": name }, h("h3", {}, title), lineChart({ series: drawn, ...options }));
}

function trainCharts(records) {
  const losses = (subset) => [
    { name: "train loss", points: points(subset, "loss") },
    { name: "validation loss", points: points(subset, "val_loss") },
  ];
  const accuracies = [
    { name: "train accuracy", points: points(records, "train_accuracy") },
    { name: "validation accuracy", points: points(records, "val_accuracy") },
  ];
  return [
    chartCard("loss", "Loss", losses(records.filter((r) => !isVae(r))), { yLabel: "loss" }),
    chartCard("vae-loss", "VAE loss (reconstruction + KL)", losses(records.filter(isVae)), { yLabel: "loss" }),
    chartCard("accuracy", "Accuracy", accuracies, { yLabel: "accuracy", yMin: 0, yMax: 1 }),
  ];
}

function experimentCharts(records, cells) {
  const perCell = (pick, key) => cells.map((cell) => ({
    name: `${cell.model} · ${cell.condition}`,
    colour: PALETTE[(cell.position - 1) % PALETTE.length],
    points: points(records.filter((r) => r.cell === cell.position && pick(r)), key, (r) => r.cell_epoch),
  }));
  const xLabel = "epoch of the cell";
  return [
    chartCard("loss", "Training loss per cell", perCell((r) => !isVae(r), "loss"), { xLabel, yLabel: "loss" }),
    chartCard("vae-loss", "VAE loss per cell", perCell(isVae, "loss"), { xLabel, yLabel: "loss" }),
    chartCard("accuracy", "Validation accuracy per cell", perCell(() => true, "val_accuracy"),
      { xLabel, yLabel: "accuracy", yMin: 0, yMax: 1 }),
  ];
}

/** Every epoch record as table rows, every key a column: what the charts leave out (gradient norm, times). */
function recordsTable(records) {
  const keys = [...new Set(records.flatMap((r) => Object.keys(r)))].filter((k) => k !== "epochs" && k !== "cells");
  const text = (value) => typeof value === "number" && !Number.isInteger(value) ? value.toPrecision(4) : String(value ?? "");
  const row = (record) => h("tr", {},
    keys.map((k) => h("td", { class: typeof record[k] === "number" ? "num" : null }, text(record[k]))));
  return h("table", {}, h("thead", {}, h("tr", {}, keys.map((k) => h("th", {}, k)))), h("tbody", {}, records.map(row)));
}

function cellsTable(cells) {
  return h("table", { id: "job-cells" },
    h("thead", {}, h("tr", {}, ["#", "Model", "Condition", "Status", "Epoch", "Trained model", "Error"].map((t) => h("th", {}, t)))),
    h("tbody", {}, cells.map((c) => h("tr", { "data-cell": c.position },
      h("td", { class: "num" }, c.position),
      h("td", {}, c.model),
      h("td", {}, c.condition),
      h("td", {}, statusBadge(c.status)),
      h("td", { class: "num" }, `${c.epoch} / ${c.epochs}`),
      h("td", {}, c.model_id ? h("a", { href: `#/models/${c.model_id}`, title: c.model_id }, shortId(c.model_id)) : "-"),
      h("td", { class: "error-text" }, c.error ? `${c.error_code ?? "error"}: ${c.error}` : "")))));
}

/** An error analysis has no curves: it trains each model `repeats` times; count those done per model. */
function repeatsTable(job, records) {
  const repeats = job.request.repeats;
  return h("table", { id: "job-repeats" },
    h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", { class: "num" }, "Repeats trained"))),
    h("tbody", {}, (job.request.models ?? []).map((model) => h("tr", {},
      h("td", {}, model), h("td", { class: "num" }, `${records.filter((r) => r.model === model).length} / ${repeats}`)))));
}

function summary(job) {
  const r = job.request, t = r.training ?? {};
  const rows = [
    ["Kind", job.kind],
    [job.kind === "train" ? "Model" : "Models", job.kind === "train" ? r.model : (r.models ?? []).join(", ")],
    job.kind === "experiment" ? ["Conditions", (r.conditions ?? []).join(", ")] : null,
    ["Images", describeDataset(r.dataset, { condition: job.kind === "train" })],
    job.kind === "error-analysis" ? ["Repeats", `${r.repeats} × ${r.n_train} training images, risks on ${r.n_eval}`] : null,
    ["Training", `preset ${t.preset}, ${t.epochs} epochs, batch ${t.batch_size}, learning rate ${t.learning_rate}, width ${t.width}`],
    r.init_from ? ["Encoder from", h("a", { href: `#/models/${r.init_from}` }, shortId(r.init_from))] : null,
    ["Created", when(job.created_at)],
    ["Started", when(job.started_at)],
    ["Finished", when(job.finished_at)],
    job.started_at && job.finished_at
      ? ["Run time", duration((Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000)] : null,
  ].filter(Boolean);
  return rows.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]);
}

function hasReport(job) {
  if (job.kind === "error-analysis") return job.status === "succeeded";
  // A failed experiment still reports the cells that succeeded.
  if (job.kind !== "experiment") return false;
  return job.status === "succeeded" || (job.status === "failed" && job.cells.some((c) => c.status === "succeeded"));
}

function results(job) {
  const ids = job.model_ids;
  const models = ids.map((id, i) => h("li", {},
    h("a", { href: `#/models/${id}`, class: "model-link" }, job.model_refs[i]),
    job.kind === "experiment" ? ` (${cellOf(job, id)})` : ""));
  const error = `${job.error_code ?? "failed"}: ${job.error ?? "no message"}`;
  return [
    job.status === "failed" ? h("div", { class: "error", role: "alert", id: "job-error" }, error) : null,
    hasReport(job) ? h("p", {}, h("a", { href: `#/jobs/${job.id}/report`, id: "job-report-link" }, "Open the report")) : null,
    ids.length ? h("h2", {}, ids.length > 1 ? "Trained models" : "Trained model") : null,
    ids.length ? h("ul", { id: "job-models" }, models) : null,
    ids.length > 1 ? h("p", {}, h("a", { href: `#/compare?ids=${ids.join(",")}` }, "Compare these models")) : null,
  ].filter(Boolean);
}

function cellOf(job, modelId) {
  const cell = job.cells.find((c) => c.model_id === modelId);
  return cell ? `${cell.model}, ${cell.condition}` : "";
}

function latestAccuracy(records) {
  const last = [...records].reverse().find((r) => r.val_accuracy != null);
  if (!last) return "";
  const where = last.cell ? `epoch ${last.cell_epoch} of ${last.model} · ${last.condition}` : `epoch ${last.epoch}`;
  return `latest validation accuracy ${percent(last.val_accuracy)} (${where})`;
}

/**
 * One job on screen. It starts from GET /v1/jobs/{id} and then applies the events of the job's stream:
 * `status` and `epoch` events change parts of the page, `end` brings the whole final job.
 */
class JobPage {
  constructor(job, signal) {
    this.job = job;
    this.records = [...job.metrics];
    this.eta = estimateEta(job);
    this.signal = signal;
    this.refreshTimer = null;
    signal.addEventListener("abort", () => clearTimeout(this.refreshTimer));

    this.title = h("h1", {});
    this.progress = h("div", { id: "job-progress" });
    this.latest = h("p", { id: "job-latest", class: "muted" });
    this.actions = h("div", { class: "row", id: "job-actions" });
    this.problem = h("div", { id: "job-problem" }); // a refused cancel, a stream that cannot be read
    this.outcome = h("div", { id: "job-results" });
    this.summary = h("dl", { id: "job-summary", class: "summary" });
    this.curves = h("div", { id: "job-curves", class: "cards" });
    this.parts = h("div", { id: "job-parts" }); // an experiment's cells, an error analysis's repeats
    // Kept across redraws, so that a <details> the reader opened stays open while epochs land.
    this.recordsCount = h("summary", {});
    this.recordsSlot = h("div");
    this.recordsBox = h("details", { id: "job-records" }, this.recordsCount, this.recordsSlot);
  }

  nodes() {
    this.showAll();
    return [
      this.title, this.progress, this.latest, this.actions, this.problem, this.outcome,
      h("h2", {}, "Curves"), this.curves,
      this.parts,
      h("h2", {}, "Request"), this.summary,
      h("details", {}, h("summary", {}, "Request as submitted (JSON)"),
        h("pre", { id: "job-request" }, JSON.stringify(this.job.request, null, 2))),
      this.recordsBox,
    ];
  }

  /** Follow the stream unless the job has already finished (then this page already has it all). */
  start() {
    if (FINISHED.has(this.job.status)) return;
    follow(this.job.id, this.records.length, (type, data) => this.onEvent(type, data), this.signal).catch((error) => {
      if (!this.signal.aborted) this.problem.replaceChildren(errorBox(error));
    });
  }

  onEvent(type, data) {
    if (type === "status") {
      Object.assign(this.job, { status: data.status, progress: data.progress });
      this.showStatus();
      this.showProgress();
      this.refreshSoon();
    } else if (type === "epoch") {
      this.records[data.index - 1] = data.record;
      this.job.progress = data.progress;
      this.eta = data.eta_seconds;
      this.showProgress();
      this.showCurves();
      this.showParts();
      if (this.job.kind === "experiment") this.refreshSoon();
    } else if (type === "end") {
      this.job = data;
      this.records = [...data.metrics];
      this.eta = null;
      this.showAll();
    }
  }

  // Until its end the stream carries the status and the epochs, not the start time nor an experiment's
  // cells: fetch the job again for those after the status changes and as an experiment's epochs land, at
  // most once a second however fast they come.
  refreshSoon() {
    if (this.refreshTimer) return;
    this.refreshTimer = setTimeout(async () => {
      this.refreshTimer = null;
      try {
        const fresh = await api(`/v1/jobs/${encodeURIComponent(this.job.id)}`, { signal: this.signal });
        if (FINISHED.has(this.job.status)) return; // the end event came meanwhile, with the last word
        Object.assign(this.job, { started_at: fresh.started_at, cells: fresh.cells, model_ids: fresh.model_ids,
          model_refs: fresh.model_refs });
        this.showParts();
        this.outcome.replaceChildren(...results(this.job));
        this.summary.replaceChildren(...summary(this.job));
      } catch { /* the next event tries again, and the end event brings the whole job anyway */ }
    }, 1000);
  }

  async cancel(button) {
    button.disabled = true;
    this.problem.replaceChildren();
    try {
      const job = await api(`/v1/jobs/${encodeURIComponent(this.job.id)}/cancel`, { method: "POST", signal: this.signal });
      // A queued job is cancelled at once; a running one stops at the end of its epoch, which the
      // stream's end event will show.
      if (FINISHED.has(job.status)) {
        this.job = job;
        this.showAll();
      } else {
        this.job.cancel_requested = true;
        this.showStatus();
      }
    } catch (error) {
      if (this.signal.aborted) return;
      button.disabled = false;
      this.problem.replaceChildren(errorBox(error));
    }
  }

  showAll() {
    this.showStatus();
    this.showProgress();
    this.showCurves();
    this.showParts();
    this.outcome.replaceChildren(...results(this.job));
    this.summary.replaceChildren(...summary(this.job));
  }

  showStatus() {
    const job = this.job, running = !FINISHED.has(job.status);
    this.title.replaceChildren(`Job ${shortId(job.id)} `, statusBadge(job.status));
    this.title.title = job.id;
    this.actions.replaceChildren(...[
      running && !job.cancel_requested
        ? h("button", { id: "job-cancel", type: "button", class: "secondary", onclick: (e) => this.cancel(e.target) }, "Cancel job")
        : null,
      running && job.cancel_requested
        ? h("span", { id: "job-cancel-result", class: "muted" }, "Cancel requested: the job stops at the end of its current epoch.")
        : null,
      h("a", { href: `#/submit?from=${job.id}`, id: "job-resubmit" }, "Submit again..."),
    ].filter(Boolean));
  }

  showProgress() {
    this.progress.replaceChildren(progressOf(this.job, this.eta));
    this.latest.textContent = latestAccuracy(this.records);
  }

  showCurves() {
    const { kind, cells } = this.job;
    if (kind === "error-analysis") {
      const note = "An error analysis draws no training curves; its EE/AE plot is in the report.";
      this.curves.replaceChildren(h("p", { class: "muted" }, note));
      return;
    }
    const charts = (kind === "experiment" ? experimentCharts(this.records, cells) : trainCharts(this.records)).filter(Boolean);
    const none = FINISHED.has(this.job.status) ? "No epoch was recorded." : "The curves appear as epochs finish.";
    this.curves.replaceChildren(...(charts.length ? charts : [h("p", { class: "muted" }, none)]));
  }

  showParts() {
    const job = this.job;
    this.parts.replaceChildren(...[
      job.kind === "experiment" ? [h("h2", {}, "Cells"), cellsTable(job.cells)] : [],
      job.kind === "error-analysis" ? [h("h2", {}, "Repeats"), repeatsTable(job, this.records)] : [],
    ].flat());
    this.recordsBox.hidden = !this.records.length;
    this.recordsCount.textContent = `Epoch records (${this.records.length})`;
    this.recordsSlot.replaceChildren(recordsTable(this.records));
  }
}

route("/jobs/:id", async ({ params, signal }) => {
  const job = await api(`/v1/jobs/${encodeURIComponent(params.id)}`, { signal });
  const page = new JobPage(job, signal);
  const nodes = page.nodes();
  page.start();
  return nodes;
}, "Job");
