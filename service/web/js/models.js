// The models pages: the registry as a list to filter, sort and pick from for comparison, and one
// model's page: its config and metrics, its training curves, the paper's figures for its kind, its
// reports, and a drop zone that runs it on a person's own images.
import { allItems, api, apiImage, duration, errorBox, h, lineChart, openApi, percent, route, when } from "./lib.js";

// --- describing a model (also used by the compare and report pages) ---------------------------------

const DATASET_TITLES = { mnist: "MNIST", "fashion-mnist": "Fashion-MNIST", gaussian: "Gaussian images" };

/** "MNIST 0 vs 1", "Fashion-MNIST, 10 classes", "Gaussian images". */
export function datasetLabel(dataset) {
  const title = DATASET_TITLES[dataset.name] ?? dataset.name;
  if (dataset.name === "gaussian") return title;
  const classes = dataset.classes ?? [];
  return classes.length === 2 ? `${title} ${classes.join(" vs ")}` : `${title}, ${classes.length} classes`;
}

/** A name that tells models apart in a legend: architecture, data, condition and the registered name/version. */
export const modelLabel = (model) =>
  `${model.model} · ${datasetLabel(model.config.dataset)} · ${model.config.dataset.condition} · ${model.name}/${model.version}`;

// `model` is anything with the architecture's name in `model`: a registered model, a report's row.
export const isVae = (model) => model.model.includes("vae");
// The paper's VAE is an MLP: kernels and feature maps exist for the CNNs and the convolutional VAEs only.
const hasConvolutions = (model) => !model.model.startsWith("vae-");

// --- per-epoch metrics (also drawn by the compare page) -------------------------------------------

export const METRIC_LABELS = {
  train_accuracy: "train accuracy", val_accuracy: "validation accuracy", loss: "train loss",
  val_loss: "validation loss", recon_loss: "reconstruction loss", kl_loss: "KL loss",
  grad_norm: "gradient norm", epoch_seconds: "epoch time (s)",
};

// Metrics that share a chart on the model page, in the order the charts come.
const CHART_GROUPS = [
  { title: "accuracy", keys: ["train_accuracy", "val_accuracy"] },
  { title: "loss", keys: ["loss", "val_loss"] },
  { title: "VAE loss terms", keys: ["recon_loss", "kl_loss"] },
  { title: "gradient norm", keys: ["grad_norm"] },
  { title: "epoch time (s)", keys: ["epoch_seconds"] },
];

/** The metric keys of some /metrics answers, those of the chart groups first, in their order. */
export function metricKeys(...metrics) {
  const present = new Set(metrics.flatMap((m) => Object.keys(m.series)));
  const known = CHART_GROUPS.flatMap((g) => g.keys);
  return [...known.filter((k) => present.has(k)), ...[...present].filter((k) => !known.includes(k)).sort()];
}

/**
 * A metric's [epoch, value] points per training phase, as a Map phase -> points. A VAE trains in
 * phases (the VAE, then its head) whose losses differ by orders of magnitude: joining them in one
 * line would draw a cliff, so each phase is its own line or chart.
 */
export function pointsByPhase(metrics, key) {
  const byPhase = new Map();
  metrics.series[key]?.forEach((value, i) => {
    if (value == null) return;
    const phase = metrics.phases[i];
    if (!byPhase.has(phase)) byPhase.set(phase, []);
    byPhase.get(phase).push([metrics.epochs[i], value]);
  });
  return byPhase;
}

function curveCharts(metrics) {
  const phases = [...new Set(metrics.phases)];
  const grouped = new Set(CHART_GROUPS.flatMap((g) => g.keys));
  const groups = [...CHART_GROUPS, ...metricKeys(metrics).filter((k) => !grouped.has(k))
    .map((key) => ({ title: METRIC_LABELS[key] ?? key, keys: [key] }))];
  const cards = [];
  for (const phase of phases) {
    for (const group of groups) {
      const series = group.keys
        .map((key) => ({ name: METRIC_LABELS[key] ?? key, points: pointsByPhase(metrics, key).get(phase) ?? [] }))
        .filter((se) => se.points.length);
      if (!series.length) continue;
      const title = phases.length > 1 ? `${group.title} (${phase} phase)` : group.title;
      cards.push(h("div", { class: "card", "data-chart": title }, h("h3", {}, title),
        lineChart({ series, yLabel: group.title })));
    }
  }
  return cards.length ? h("div", { class: "cards" }, cards) : h("p", { class: "muted" }, "No epochs recorded.");
}

// --- /models: the list --------------------------------------------------------------------------

/** An alias as a small badge; with `onRemove`, a × that removes it. */
function aliasBadge(alias, onRemove = null) {
  return h("span", { class: "badge", "data-alias": alias }, alias, onRemove
    ? h("button", { type: "button", class: "link remove-alias", title: `remove the alias ${alias}`,
      "aria-label": `remove the alias ${alias}`, onclick: onRemove }, "×")
    : null);
}

// The list's columns. A column whose key is one of the API's sort keys sorts (GET /v1/models sorts in
// the database); image size, parameters and training time are not among them, so they only show.
const COLUMNS = [
  { key: "name", cell: (m) => [h("a", { href: `#/models/${m.id}` }, `${m.name}/${m.version}`), m.aliases.map((a) => aliasBadge(a))] },
  { key: "architecture", cell: (m) => m.model },
  { key: "dataset", cell: (m) => datasetLabel(m.config.dataset) },
  { key: "condition", cell: (m) => m.config.dataset.condition },
  { key: "size", title: "image size", cell: (m) => m.config.dataset.image_size, num: true },
  { key: "parameters", cell: (m) => m.parameter_count.toLocaleString("en"), num: true },
  { key: "accuracy", title: "val accuracy", cell: (m) => percent(m.final_metrics.val_accuracy), num: true },
  { key: "time", title: "training time", cell: (m) => duration(m.train_seconds), num: true },
  { key: "date", title: "created", cell: (m) => when(m.created_at) },
];
// The API's filters, by their query parameters' names.
const FILTERS = ["name", "architecture", "dataset", "condition"];
const columnOf = (key) => COLUMNS.find((c) => c.key === key);
// Text columns sort A to Z first; numbers and dates best or newest first.
const firstDirection = (key) => (columnOf(key).num || key === "date" ? "desc" : "asc");
const flip = (dir) => (dir === "asc" ? "desc" : "asc");

/**
 * What GET /v1/models offers, from the API's OpenAPI document: the sort keys, the page size (default
 * and most), and each filter's choices as [value, text] pairs, the names being those registered.
 */
function listOptions(doc, names) {
  const parameter = (name) => doc.paths["/v1/models"].get.parameters.find((p) => p.name === name).schema;
  const { TrainJob, DatasetConfig } = doc.components.schemas;
  const plain = (values) => values.map((v) => [v, v]);
  return {
    sortKeys: parameter("sort").enum.filter((key) => !key.startsWith("-")),
    limit: { fallback: parameter("limit").default, most: parameter("limit").maximum },
    choices: {
      name: plain(names.map((n) => n.name)),
      architecture: plain(TrainJob.properties.model.enum),
      dataset: DatasetConfig.properties.name.enum.map((v) => [v, DATASET_TITLES[v] ?? v]),
      condition: plain(DatasetConfig.properties.condition.enum),
    },
  };
}

const wholeNumber = (text, fallback) => (/^\d+$/.test(text ?? "") ? Number(text) : fallback);

/** The list's state lives in the URL (#/models?architecture=vgg&sort=accuracy&dir=desc&offset=50), so a view can be shared. */
function readState(query, options) {
  const sort = options.sortKeys.includes(query.get("sort")) && columnOf(query.get("sort")) ? query.get("sort") : "date";
  const dir = ["asc", "desc"].includes(query.get("dir")) ? query.get("dir") : firstDirection(sort);
  const limit = Math.min(Math.max(wholeNumber(query.get("limit"), options.limit.fallback), 1), options.limit.most);
  return { ...Object.fromEntries(FILTERS.map((f) => [f, query.get(f) ?? ""])), sort, dir,
           limit, offset: wholeNumber(query.get("offset"), 0) };
}

function writeState(state) {
  if (location.hash.split("?")[0] !== "#/models") return; // the person has left the page meanwhile
  const query = new URLSearchParams(Object.entries(state).filter(([, v]) => v));
  // replaceState, not location.hash: changing the hash would make the router build the page again.
  history.replaceState(null, "", `#/models?${query}`);
}

/** The state as GET /v1/models's query: the same filters, `-key` for descending. */
function apiQuery(state) {
  const query = new URLSearchParams(FILTERS.filter((f) => state[f]).map((f) => [f, state[f]]));
  query.set("sort", `${state.dir === "desc" ? "-" : ""}${state.sort}`);
  query.set("limit", state.limit);
  query.set("offset", state.offset);
  return query;
}

/** "1-50 of 123 models". */
function pageText({ items, total, offset }) {
  return items.length ? `${offset + 1}-${offset + items.length} of ${total} models` : `0 of ${total} models`;
}

/** The list, drawn from the API one page at a time; resolves once the first page is on it. */
async function modelsList(options, query, signal) {
  const state = readState(query, options);
  const selected = new Set(); // ids, kept across pages and filters: a comparison may take models from several
  const tbody = h("tbody");
  const problem = h("div");
  const count = h("span", { class: "muted", id: "models-count" });
  const previous = h("button", { type: "button", id: "page-previous", class: "secondary",
    onclick: () => setOffset(state.offset - state.limit) }, "◀ previous");
  const next = h("button", { type: "button", id: "page-next", class: "secondary",
    onclick: () => setOffset(state.offset + state.limit) }, "next ▶");
  const compare = h("button", { id: "compare-selected", disabled: true,
    onclick: () => { location.hash = `#/compare?ids=${[...selected].join(",")}`; } }, "Compare");
  const sortable = (column) => options.sortKeys.includes(column.key);
  const headers = COLUMNS.map((column) => h("th", {
    class: [sortable(column) ? "sortable" : null, column.num ? "num" : null].filter(Boolean).join(" ") || null,
    "data-column": column.key, "data-sort": sortable(column) ? column.key : null,
    title: sortable(column) ? null : "the API does not sort by this column",
    // The sorted column's header flips its direction; another's sorts by it.
    onclick: sortable(column)
      ? () => setSort(column.key, column.key === state.sort ? flip(state.dir) : firstDirection(column.key))
      : null,
  }, column.title ?? column.key));

  const sortSelect = h("select", { id: "sort-key", onchange: () => setSort(sortSelect.value, firstDirection(sortSelect.value)) },
    COLUMNS.filter(sortable).map((c) => h("option", { value: c.key }, c.title ?? c.key)));
  const dirButton = h("button", { id: "sort-direction", type: "button", class: "secondary",
    onclick: () => setSort(state.sort, flip(state.dir)) });
  const filters = FILTERS.map((key) => {
    // A value from a shared link that is no longer a choice (a name since deleted) still shows what is filtered.
    const choices = options.choices[key].some(([v]) => v === state[key]) || !state[key]
      ? options.choices[key] : [...options.choices[key], [state[key], state[key]]];
    const select = h("select", { id: `filter-${key}`, onchange: () => { Object.assign(state, { [key]: select.value, offset: 0 }); draw(); } },
      h("option", { value: "" }, "all"), choices.map(([value, text]) => h("option", { value, selected: value === state[key] }, text)));
    return h("label", {}, `${key} `, select);
  });

  function setSort(key, dir) {
    Object.assign(state, { sort: key, dir, offset: 0 });
    draw();
  }

  function setOffset(offset) {
    state.offset = Math.max(offset, 0);
    draw();
  }

  function row(model) {
    const box = h("input", { type: "checkbox", class: "select-model", value: model.id, checked: selected.has(model.id),
      "aria-label": `select ${modelLabel(model)}`,
      onchange: () => { box.checked ? selected.add(model.id) : selected.delete(model.id); updateCompare(); } });
    return h("tr", { "data-id": model.id },
      h("td", {}, box),
      COLUMNS.map((column) => h("td", { class: column.num ? "num" : null, "data-column": column.key }, column.cell(model))));
  }

  function updateCompare() {
    compare.disabled = selected.size === 0;
    compare.textContent = selected.size ? `Compare ${selected.size}` : "Compare";
  }

  function showControls() {
    sortSelect.value = state.sort;
    dirButton.textContent = state.dir === "asc" ? "ascending ▲" : "descending ▼";
    for (const th of headers) {
      const on = th.dataset.column === state.sort;
      th.setAttribute("aria-sort", on ? (state.dir === "asc" ? "ascending" : "descending") : "none");
      th.classList.toggle("sorted", on);
    }
  }

  function showPage(page) {
    tbody.replaceChildren(...page.items.map(row));
    if (!page.items.length) {
      tbody.append(h("tr", {}, h("td", { colspan: String(COLUMNS.length + 1), class: "muted" },
        page.total ? "No models on this page." : "No model matches these filters.")));
    }
    count.textContent = pageText(page);
    previous.disabled = page.offset === 0;
    next.disabled = page.offset + page.items.length >= page.total;
  }

  let loading = null; // the request for the view on screen: a newer view aborts it, so no older answer lands last

  async function draw() {
    writeState(state);
    showControls();
    loading?.abort();
    const controller = (loading = new AbortController());
    try {
      const page = await api(`/v1/models?${apiQuery(state)}`, { signal: AbortSignal.any([signal, controller.signal]) });
      problem.replaceChildren();
      showPage(page);
      return page;
    } catch (error) {
      if (!controller.signal.aborted && !signal.aborted) problem.replaceChildren(errorBox(error));
    }
  }

  const first = await draw();
  if (first?.total === 0 && FILTERS.every((f) => !state[f])) {
    return h("p", { class: "muted" }, "No models yet: submit a training job first.");
  }
  return h("section", {},
    h("div", { class: "row toolbar" }, filters, h("label", {}, "sort by ", sortSelect), dirButton, compare),
    problem,
    h("table", { id: "models-table", class: "models" }, h("thead", {}, h("tr", {}, h("th", {}, ""), headers)), tbody),
    h("div", { class: "row toolbar pager" }, previous, count, next));
}

route("/models", async ({ query, signal }) => {
  const [doc, names] = await Promise.all([openApi(), allItems("/v1/registered-models", signal)]);
  return [h("h1", {}, "Models"), await modelsList(listOptions(doc, names), query, signal)];
}, "Models");

// --- /models/:id: one model -------------------------------------------------------------------------

function definitionList(entries) {
  return h("dl", { class: "facts" }, entries.filter(([, v]) => v != null && v !== "")
    .flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

/**
 * This version's aliases, each with a × that removes it, and a form that points one more at it. After
 * either, the badges are the name's aliases that point here, as the API answers.
 */
function aliasEditor(model, signal) {
  const namePath = `/v1/registered-models/${encodeURIComponent(model.name)}`;
  const badges = h("span", { id: "model-aliases" });
  const problem = h("div");
  const input = h("input", { id: "alias-input", required: true, size: 14, placeholder: "e.g. champion",
    "aria-label": "alias to point at this version" });
  const aliasPath = (alias) => `${namePath}/aliases/${encodeURIComponent(alias)}`;
  // DELETE answers 204 with no body: the name's summary is read afterwards.
  const remove = (alias) => change(async () => {
    await api(aliasPath(alias), { method: "DELETE", signal });
    return api(namePath, { signal });
  });
  const showAliases = (aliases) => badges.replaceChildren(...[...aliases].sort().map((alias) => aliasBadge(alias, () => remove(alias))));

  /** Runs `request` (which resolves to the name's summary); true if it worked, else shows the API's error. */
  async function change(request) {
    try {
      const summary = await request();
      problem.replaceChildren();
      showAliases(Object.keys(summary.aliases).filter((alias) => summary.aliases[alias] === model.version));
      return true;
    } catch (error) {
      if (!signal.aborted) problem.replaceChildren(errorBox(error));
      return false;
    }
  }

  // Setting an alias another version has moves it here: the API does that in one statement.
  const form = h("form", { id: "alias-form", class: "row", onsubmit: async (event) => {
    event.preventDefault();
    if (await change(() => api(aliasPath(input.value.trim()), { method: "PUT", json: { version: model.version }, signal }))) {
      input.value = "";
    }
  } }, input, h("button", { id: "alias-set" }, "Set alias"));
  showAliases(model.aliases);
  return h("div", { class: "aliases" }, badges, form, problem);
}

function summaryCard(model, signal) {
  const { dataset, training } = model.config;
  return h("div", { class: "card", id: "model-summary" }, h("h2", {}, "Configuration"), definitionList([
    // The name links to the list of its versions.
    ["name", h("a", { href: `#/models?name=${encodeURIComponent(model.name)}` }, model.name)],
    ["version", String(model.version)],
    ["aliases", aliasEditor(model, signal)],
    ["architecture", model.model],
    ["data", `${datasetLabel(dataset)}, ${dataset.image_size}×${dataset.image_size}`],
    ["classes", model.class_names.join(", ")],
    ["condition", dataset.condition],
    ["preset", training.preset],
    ["epochs", isVae(model) ? `${training.epochs} (head: ${training.head_epochs})` : training.epochs],
    ["batch size", training.batch_size],
    ["learning rate", training.learning_rate],
    ["width", training.width],
    ["latent dimension", isVae(model) ? training.latent_dim : null],
    ["seed", `${dataset.seed} (data), ${training.seed} (training)`],
    ["starts from", model.config.init_from ? h("a", { href: `#/models/${model.config.init_from}` }, model.config.init_from) : null],
    ["parameters", model.parameter_count.toLocaleString("en")],
    ["training time", duration(model.train_seconds)],
    ["created", when(model.created_at)],
    ["job", model.job_id ? h("a", { href: `#/jobs/${model.job_id}` }, model.job_id) : null],
    ["weights", `${model.artifact.status}: ${model.artifact.detail}`],
  ]));
}

export const formatMetric = (key, value) =>
  value == null ? "-" : key.includes("accuracy") ? percent(value) : Number(value).toPrecision(4);

function metricsCard(model) {
  const entries = Object.entries(model.final_metrics);
  return h("div", { class: "card", id: "model-metrics" }, h("h2", {}, "Final metrics"),
    h("p", { class: "big" }, "validation accuracy ", h("strong", { id: "model-accuracy" }, percent(model.final_metrics.val_accuracy))),
    h("table", {}, h("tbody", {}, entries.map(([key, value]) =>
      h("tr", {}, h("th", {}, METRIC_LABELS[key] ?? key), h("td", { class: "num" }, formatMetric(key, value)))))));
}

// The paper's figures the API draws, and for which models (the API answers 409 for the others).
export const FIGURES = [
  { name: "kernels", title: "First-layer kernels", applies: hasConvolutions },
  { name: "feature-maps", title: "Feature maps of a validation image (first and last conv layer)", applies: hasConvolutions },
  { name: "reconstructions", title: "Reconstructions (top: originals)", applies: isVae },
  { name: "latent-tsne", title: "t-SNE of the latent space", applies: isVae },
  { name: "latent-classifiers", title: "Latent space: K-means labels or SVM hyperplane", applies: isVae },
  { name: "confusion-matrix", title: "Confusion matrix (validation)", applies: () => true },
];

function figuresSection(model, signal) {
  return h("section", { id: "model-figures" }, h("h2", {}, "The paper's figures"),
    h("p", { class: "muted" }, "Drawn on the model's validation images; the first view of a t-SNE takes seconds."),
    h("div", { class: "cards figures" }, FIGURES.filter((f) => f.applies(model)).map((f) =>
      h("div", { class: "card", "data-figure": f.name }, h("h3", {}, f.title),
        apiImage(`/v1/models/${model.id}/figures/${f.name}.png`, { alt: f.title, signal })))));
}

// --- the drop zone: predictions (and reconstructions) for a person's own images ---------------------

function probabilityBars(model, prediction) {
  return h("div", { class: "probabilities" }, model.classes.map((label, i) => {
    const p = prediction.probabilities[String(label)] ?? 0;
    return h("div", { class: `prob${label === prediction.label ? " predicted" : ""}`, "data-label": String(label) },
      h("span", { class: "name" }, model.class_names[i]),
      h("span", { class: "track" }, h("span", { class: "fill", style: { width: `${(100 * p).toFixed(1)}%` } })),
      h("span", { class: "value" }, percent(p, 1)));
  }));
}

/** What else the head says: the K-means cluster and its distance, or the SVM's signed margin. */
function headDetail(prediction) {
  if (prediction.cluster != null) return `cluster ${prediction.cluster}, distance ${prediction.distance.toFixed(3)}`;
  if (prediction.margin != null) return `SVM margin ${prediction.margin.toFixed(3)}`;
  return null;
}

function singleFile(field, file) {
  const form = new FormData();
  form.append(field, file);
  return form;
}

function predictionCard(model, file, prediction, signal) {
  const original = URL.createObjectURL(file);
  signal.addEventListener("abort", () => URL.revokeObjectURL(original));
  const extra = h("div", { class: "extra" });
  if (isVae(model)) {
    // With Accept: image/png and one image, the API answers a PNG of the input's size.
    extra.append(apiImage(`/v1/models/${model.id}/reconstruct`, {
      method: "POST", body: singleFile("files", file), headers: { Accept: "image/png" }, signal,
      alt: `reconstruction of ${file.name}`, caption: "reconstruction" }));
    extra.classList.add("reconstruction");
  } else if (hasConvolutions(model)) {
    const show = h("button", { type: "button", class: "secondary", onclick: () => show.replaceWith(
      apiImage(`/v1/models/${model.id}/figures/feature-maps.png`, {
        method: "POST", body: singleFile("file", file), signal, alt: `feature maps of ${file.name}` })) },
    "Show feature maps");
    extra.append(show);
  }
  return h("div", { class: "card prediction", "data-file": file.name, "data-label": String(prediction.label) },
    h("div", { class: "row" },
      h("figure", { class: "digit" }, h("img", { src: original, alt: file.name }), h("figcaption", {}, file.name)),
      h("div", { class: "verdict" },
        h("p", {}, "predicted ", h("strong", { class: "predicted-name" }, prediction.name)),
        headDetail(prediction) ? h("p", { class: "muted head" }, headDetail(prediction)) : null,
        probabilityBars(model, prediction))),
    extra);
}

function dropZone(model, signal) {
  const results = h("div", { id: "predictions", class: "cards" });
  const input = h("input", { type: "file", id: "dropzone-input", accept: "image/png,image/jpeg", multiple: true,
    hidden: true, onchange: () => { predictFiles(input.files); input.value = ""; } });
  const size = model.config.dataset.image_size;
  const zone = h("div", { id: "dropzone", class: "dropzone", role: "button", tabindex: "0",
    "aria-label": "drop images to classify, or press to choose files" },
  h("strong", {}, "Drop images here"), h("br"),
  `PNG or JPEG, one or several, resized to ${size}×${size}; or click to choose files`, input);

  const highlight = (on) => zone.classList.toggle("over", on);
  // The input sits inside the zone: its own click bubbles up here and must not open the chooser twice.
  zone.addEventListener("click", (event) => { if (event.target !== input) input.click(); });
  zone.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault();
    input.click();
  });
  // Without preventDefault on dragenter and dragover the browser would open a dropped file itself.
  zone.addEventListener("dragenter", (event) => { event.preventDefault(); highlight(true); });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); highlight(true); });
  zone.addEventListener("dragleave", (event) => { if (!zone.contains(event.relatedTarget)) highlight(false); });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    highlight(false);
    predictFiles(event.dataTransfer.files);
  });

  async function predictFiles(fileList) {
    const files = [...fileList].filter((f) => /^image\/(png|jpeg)$/.test(f.type) || /\.(png|jpe?g)$/i.test(f.name));
    if (!files.length) {
      results.replaceChildren(errorBox(new Error("No PNG or JPEG image among the dropped files.")));
      return;
    }
    results.replaceChildren(h("p", { class: "muted" }, `Classifying ${files.length} image(s)...`));
    const form = new FormData();
    files.forEach((file) => form.append("files", file));
    try {
      const { predictions } = await api(`/v1/models/${model.id}/predict`, { method: "POST", body: form, signal });
      results.replaceChildren(...files.map((file, i) => predictionCard(model, file, predictions[i], signal)));
    } catch (error) {
      if (!signal.aborted) results.replaceChildren(errorBox(error));
    }
  }

  return h("section", { id: "try-it" }, h("h2", {}, "Try it on your images"), zone, results);
}

// --- reports ------------------------------------------------------------------------------------

/** A card whose content is computed on request: `load()` returns the nodes; errors show in place. */
function onDemand(id, title, description, buttonText, load, controls = []) {
  const out = h("div", { class: "report-body" });
  const button = h("button", { type: "button", id: `${id}-run`, onclick: async () => {
    button.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, "Computing..."));
    try {
      out.replaceChildren(...[await load()].flat());
    } catch (error) {
      out.replaceChildren(errorBox(error));
    } finally {
      button.disabled = false;
    }
  } }, buttonText);
  return h("div", { class: "card", id }, h("h2", {}, title), h("p", { class: "muted" }, description),
    h("div", { class: "row" }, controls, button), out);
}

function confusionTable(report) {
  return h("table", { class: "confusion" },
    h("thead", {}, h("tr", {}, h("th", {}, "true \\ predicted"), report.class_names.map((n) => h("th", { class: "num" }, n)))),
    h("tbody", {}, report.confusion_matrix.map((row, i) =>
      h("tr", {}, h("th", {}, report.class_names[i]), row.map((count) => h("td", { class: "num" }, count))))));
}

function evaluationCard(model, signal) {
  const trained = model.config.dataset.condition;
  // The paper's bracketed Table 1 values: trained on clean images, tested on noisy ones.
  const condition = h("select", { id: "evaluation-condition" }, ["vanilla", "imbalance", "noisy"].map((c) =>
    h("option", { value: c, selected: c === (trained === "vanilla" ? "noisy" : "vanilla") }, c)));
  return onDemand("evaluation-report", "Evaluation under another condition",
    `Trained on ${trained} images; scores it on the validation images of the condition chosen.`, "Evaluate",
    async () => {
      const report = await api(`/v1/models/${model.id}/reports/evaluation?condition=${condition.value}`, { signal });
      return [h("p", {}, `accuracy on ${report.condition} images: `,
        h("strong", { class: "evaluation-accuracy" }, percent(report.accuracy)), ` (${report.n_images} images)`),
      confusionTable(report)];
    }, [h("label", {}, "test on ", condition)]);
}

function wassersteinCard(model, signal) {
  // The paper's numbers (and the authors' code's) are for MNIST 0 vs 1, keyed by digit or "reference".
  const published = (report, source, key) => (model.config.dataset.name === "mnist" ? report.published[source][key] : null);
  const fmt = (x) => (x == null ? "-" : x.toFixed(4));
  const name = (label) => model.class_names[model.classes.indexOf(label)] ?? label;
  return onDemand("wasserstein-report", "Sliced Wasserstein distance",
    "Per class, between the validation images and their reconstructions (paper eq. 1-2), and class 0 against class 1 as a yardstick. Takes a few seconds the first time.",
    "Compute", async () => {
      const report = await api(`/v1/models/${model.id}/reports/wasserstein`, { signal });
      const rows = [
        ...report.classes.map((c) => [`${name(c.label)} vs its reconstructions`, c, String(c.label)]),
        [`${report.reference.labels.map(name).join(" vs ")} (originals)`, report.reference, "reference"],
      ];
      return [h("table", { class: "wasserstein" },
        h("thead", {}, h("tr", {}, ["class", "ours ± s.e.", "paper", "authors' code"].map((t, i) => h("th", { class: i ? "num" : null }, t)))),
        h("tbody", {}, rows.map(([title, ours, key]) => h("tr", { "data-key": key }, h("th", {}, title),
          h("td", { class: "num" }, `${fmt(ours.wasserstein)} ± ${fmt(ours.std_error)}`),
          h("td", { class: "num" }, fmt(published(report, "paper", key))),
          h("td", { class: "num" }, fmt(published(report, "authors_code", key))))))),
      h("p", { class: "muted" }, `${report.projections} projections, seed ${report.seed}, ` +
        `${report.classes.map((c) => `${c.n_images} validation images of ${name(c.label)}`).join(", ")}` +
        `${report.normalized ? ", each min-max scaled as in the paper" : ""}. ${report.published.note}`)];
    });
}

route("/models/:id", async ({ params, signal }) => {
  const [model, metrics] = await Promise.all([
    api(`/v1/models/${params.id}`, { signal }),
    api(`/v1/models/${params.id}/metrics`, { signal }),
  ]);
  return [
    h("h1", {}, `${model.model} · ${datasetLabel(model.config.dataset)} · ${model.config.dataset.condition}`),
    h("p", { class: "muted" }, `${model.name}/${model.version} · model ${model.id} · `,
      h("a", { href: `#/compare?ids=${model.id}` }, "compare with others")),
    h("div", { class: "cards" }, summaryCard(model, signal), metricsCard(model)),
    dropZone(model, signal),
    h("h2", {}, "Training curves"),
    curveCharts(metrics),
    figuresSection(model, signal),
    h("h2", {}, "Reports"),
    h("div", { class: "cards wide" }, evaluationCard(model, signal), isVae(model) ? wassersteinCard(model, signal) : null),
  ];
}, "Model");
