// A job's report: for an experiment, the paper's Tables 1 and 2 laid out as in the paper with its
// numbers beside ours, and the figures of each cell's model; for an error analysis, estimation and
// approximation error against model size (the paper's figure 10).
import { api, apiImage, errorBox, h, route } from "./lib.js";
import { datasetLabel, FIGURES } from "./models.js";

// The paper's own row and column names.
const MODEL_TITLES = {
  vgg: "VGG", resnet: "Resnet", unet: "Unet", "unet-pretrained": "Unet Pretrained",
  "vae-svm": "VAE + SVM", "vae-kmeans": "VAE + KMeans",
};
const CONDITION_TITLES = { vanilla: "No noise", imbalance: "Class imbalance", noisy: "Noisy images" };

const fixed = (digits) => (x) => (x == null ? "-" : x.toFixed(digits));

/** "51.06 (65.90)": the accuracy, and in brackets the model trained clean and tested noisy, as the paper prints it. */
function accuracyText(value, which) {
  const bracket = value.trained_clean?.[which];
  return fixed(2)(value[which]) + (bracket != null ? ` (${bracket.toFixed(2)})` : "");
}

/**
 * One of the paper's tables: models down, conditions across, each condition's column ours then the
 * paper's. `table` is the API's layout (ml.experiment.paper_tables); our values link to their models.
 * A grid on another task than the paper's has no paper values, and no paper columns.
 */
function paperTable(id, caption, table, text, modelIdOf) {
  const { models, conditions, values } = table;
  const onPapersTask = models.some((m) => conditions.some((c) => values[m][c].paper != null));
  const columns = onPapersTask ? ["ours", "paper"] : ["ours"];
  const cell = (m, c, which) => {
    const content = text(values[m][c], which);
    const modelId = which === "ours" ? modelIdOf(m, c) : null;
    return h("td", { class: `num ${which}`, "data-model": m, "data-condition": c, "data-which": which },
      modelId ? h("a", { href: `#/models/${modelId}`, title: "this cell's model" }, content) : content);
  };
  return h("table", { id, class: "paper-table" },
    h("caption", {}, caption),
    h("thead", {},
      h("tr", {}, h("th", { rowspan: "2" }, "Model"),
        conditions.map((c) => h("th", { colspan: String(columns.length), class: "group" }, CONDITION_TITLES[c] ?? c))),
      h("tr", {}, conditions.flatMap(() => columns.map((which) => h("th", { class: `num ${which}` }, which))))),
    h("tbody", {}, models.map((m) => h("tr", { "data-model": m }, h("th", {}, MODEL_TITLES[m] ?? m),
      conditions.flatMap((c) => columns.map((which) => cell(m, c, which)))))));
}

function setting(job) {
  const { dataset, training } = job.request;
  return `Ours: ${datasetLabel(dataset)} at ${dataset.image_size}×${dataset.image_size}, width ${training.width}, ` +
    `${training.epochs} epoch(s) of batch ${training.batch_size} (preset ${training.preset}). ` +
    "The paper's: MNIST 0 vs 1 at 64×64, full width, 10 epochs of batch 16 on the authors' GPU.";
}

function cellFigures(rows, signal) {
  const options = [{ name: "training-curves", title: "Training curves", applies: () => true }, ...FIGURES];
  const select = h("select", { id: "report-figure", onchange: () => draw() },
    options.map((f) => h("option", { value: f.name }, f.title)));
  const grid = h("div", { class: "cards figures wide", id: "report-figures" });
  function draw() {
    const figure = options.find((f) => f.name === select.value);
    grid.replaceChildren(...rows.filter((row) => figure.applies(row)).map((row) =>
      h("div", { class: "card", "data-model": row.model, "data-condition": row.condition },
        h("h3", {}, `${MODEL_TITLES[row.model] ?? row.model}, ${CONDITION_TITLES[row.condition] ?? row.condition}`),
        apiImage(`/v1/models/${row.model_id}/figures/${figure.name}.png`, { alt: figure.title, signal }))));
    if (!grid.children.length) grid.append(h("p", { class: "muted" }, "No cell of this grid has that figure."));
  }
  draw();
  return [h("h2", {}, "Figures of each cell"), h("label", {}, "figure ", select), grid];
}

function experimentReport(job, report, signal) {
  // The API lays the tables out (ml.experiment.paper_tables): the paper's numbers come from it, not from here.
  const modelIdOf = (m, c) => report.rows.find((r) => r.model === m && r.condition === c)?.model_id;
  const { table_1: accuracy, table_2: seconds } = report.tables;
  const failed = report.failed ?? [];
  return [
    h("p", { class: "muted" }, setting(job)),
    failed.length ? h("div", { class: "error" }, `${failed.length} cell(s) failed and are left out: `,
      failed.map((f) => `${f.model} under ${f.condition} (${f.error})`).join("; ")) : null,
    paperTable("table-1", `Table 1: ${accuracy.title}`, accuracy, accuracyText, modelIdOf),
    accuracy.conditions.includes("noisy")
      ? h("p", { class: "muted" }, "In brackets: the model trained on clean images, tested on the noisy validation images.")
      : null,
    paperTable("table-2", `Table 2: ${seconds.title}`, seconds, (value, which) => fixed(1)(value[which]), modelIdOf),
    cellFigures(report.rows.filter((row) => row.model_id), signal),
  ];
}

function errorAnalysisReport(job, report, signal) {
  const spread = (m, key) => `${m[`${key}_mean`].toFixed(4)} ± ${m[`${key}_std`].toFixed(4)}`;
  const models = [...report.models].sort((a, b) => a.parameter_count - b.parameter_count);
  const { bayes } = report;
  return [
    h("p", { class: "muted" }, `${report.n_train} training images per model, risks measured on ${report.n_eval} images, ` +
      `${report.repeats} repeats (mean ± standard deviation over repeats).`),
    apiImage(`/v1/jobs/${job.id}/report?format=png`, { alt: "estimation and approximation error against parameter count",
      caption: "Estimation (EE) and approximation (AE) error against parameter count", signal }),
    h("table", { id: "error-analysis-table" },
      h("thead", {}, h("tr", {}, ["model", "parameters", "estimation error (EE)", "approximation error (AE)",
        "R_n(h-hat)", "R_n(h-bar)", "repeats"].map((t, i) => h("th", { class: i ? "num" : null }, t)))),
      h("tbody", {}, models.map((m) => h("tr", { "data-model": m.model }, h("th", {}, MODEL_TITLES[m.model] ?? m.model),
        [m.parameter_count.toLocaleString("en"), spread(m, "ee"), spread(m, "ae"), spread(m, "risk_hat"),
          spread(m, "risk_bar"), m.repeats].map((v) => h("td", { class: "num" }, v)))))),
    h("p", { id: "bayes-line" }, `Bayes risk R(h*) = ${bayes.risk.toPrecision(6)} (${bayes.method.replace("_", " ")}` +
      (bayes.mahalanobis != null ? `, Mahalanobis distance Δ = ${bayes.mahalanobis.toFixed(4)}` : "") +
      `); mean R_n(h*) on the evaluation sets = ${bayes.empirical_risk_mean.toFixed(4)}.`),
  ];
}

const TITLES = { experiment: "Experiment report", "error-analysis": "Error analysis report" };

route("/jobs/:id/report", async ({ params, signal }) => {
  const job = await api(`/v1/jobs/${params.id}`, { signal });
  const heading = [
    h("h1", {}, TITLES[job.kind] ?? "Report"),
    h("p", { class: "muted" }, h("a", { href: `#/jobs/${job.id}` }, `job ${job.id}`), ` · ${job.kind} · ${job.status}`),
  ];
  if (!TITLES[job.kind]) {
    return [...heading, h("p", {}, "A train job has no report: its result is a model, ",
      job.model_ids.map((id, i) => h("a", { href: `#/models/${id}` }, job.model_refs[i])), ".")];
  }
  let report;
  try {
    report = await api(`/v1/jobs/${job.id}/report`, { signal });
  } catch (error) {
    if (signal.aborted) throw error;
    return [...heading, errorBox(error)]; // e.g. report_not_ready while the job runs
  }
  return [...heading, job.kind === "experiment" ? experimentReport(job, report, signal) : errorAnalysisReport(job, report, signal)];
}, "Report");
