// The compare page: the training curves of several models overlaid, one chart per metric, and their
// configs and final metrics side by side. The models are the URL's (#/compare?ids=a,b), so a
// comparison can be shared; adding or removing a model changes the URL.
import { allItems, api, duration, errorBox, h, lineChart, navigate, PALETTE, route, when } from "./lib.js";
import { datasetLabel, formatMetric, METRIC_LABELS, metricKeys, modelLabel, pointsByPhase } from "./models.js";

const showIds = (ids) => navigate(ids.length ? `#/compare?ids=${ids.join(",")}` : "#/compare");

const FACTS = [
  ["architecture", (m) => m.model],
  ["data", (m) => datasetLabel(m.config.dataset)],
  ["condition", (m) => m.config.dataset.condition],
  ["image size", (m) => m.config.dataset.image_size],
  ["width", (m) => m.config.training.width],
  ["epochs", (m) => m.config.training.epochs],
  ["batch size", (m) => m.config.training.batch_size],
  ["learning rate", (m) => m.config.training.learning_rate],
  ["parameters", (m) => m.parameter_count.toLocaleString("en")],
  ["training time", (m) => duration(m.train_seconds)],
  ["created", (m) => when(m.created_at)],
];

/** One chart per metric, one colour per model; a VAE's phases are separate lines of its colour. */
function overlaidCharts(models, metrics) {
  return metricKeys(...metrics).map((key) => {
    const series = models.flatMap((model, i) => {
      const phases = pointsByPhase(metrics[i], key);
      return [...phases].map(([phase, points]) => ({
        name: phases.size > 1 ? `${modelLabel(model)} (${phase} phase)` : modelLabel(model),
        points,
        colour: PALETTE[i % PALETTE.length],
      }));
    });
    const title = METRIC_LABELS[key] ?? key;
    return h("div", { class: "card", "data-metric": key }, h("h3", {}, title), lineChart({ series, yLabel: title }));
  });
}

function sideBySide(models, ids) {
  const metricNames = [...new Set(models.flatMap((m) => Object.keys(m.final_metrics)))];
  const best = (key) => Math.max(...models.map((m) => m.final_metrics[key] ?? -Infinity));
  const remove = (id) => h("button", { type: "button", class: "link remove-model", "data-id": id,
    title: "remove from the comparison", onclick: () => showIds(ids.filter((other) => other !== id)) }, "remove");
  return h("table", { id: "compare-table" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), models.map((m, i) => h("th", { "data-id": m.id },
      h("i", { class: "swatch", style: { background: PALETTE[i % PALETTE.length] } }),
      h("a", { href: `#/models/${m.id}` }, modelLabel(m)), " ", remove(m.id))))),
    h("tbody", {},
      FACTS.map(([name, value]) => h("tr", {}, h("th", {}, name), models.map((m) => h("td", {}, value(m))))),
      metricNames.map((key) => h("tr", { "data-metric": key }, h("th", {}, METRIC_LABELS[key] ?? key),
        models.map((m) => h("td", {
          class: key.includes("accuracy") && m.final_metrics[key] === best(key) && models.length > 1 ? "best" : null,
        }, formatMetric(key, m.final_metrics[key])))))));
}

function addControl(everyModel, ids) {
  const others = everyModel.filter((m) => !ids.includes(m.id));
  const select = h("select", { id: "add-model" }, others.map((m) => h("option", { value: m.id }, modelLabel(m))));
  return h("div", { class: "row toolbar" },
    h("label", {}, "add a model ", select),
    h("button", { type: "button", id: "add-model-button", disabled: !others.length,
      onclick: () => showIds([...ids, select.value]) }, "Add"),
    h("a", { href: "#/models" }, "pick several on the Models page"));
}

route("/compare", async ({ query, signal }) => {
  const ids = [...new Set((query.get("ids") ?? "").split(",").filter(Boolean))];
  // A model deleted since the link was made fails alone: the others are still compared.
  const [everyModel, loaded] = await Promise.all([allItems("/v1/models", signal), Promise.allSettled(ids.map((id) => Promise.all([
    api(`/v1/models/${id}`, { signal }), api(`/v1/models/${id}/metrics`, { signal })])))]);
  const found = loaded.filter((r) => r.status === "fulfilled").map((r) => r.value);
  const failures = loaded.map((r, i) => r.status === "rejected" ? errorBox(new Error(`${ids[i]}: ${r.reason.message}`)) : null);
  const models = found.map(([model]) => model), metrics = found.map(([, m]) => m);
  const shown = models.map((m) => m.id);
  return [
    h("h1", {}, "Compare models"),
    failures,
    addControl(everyModel, shown),
    models.length ? [
      h("h2", {}, "Training curves"),
      h("div", { class: "cards", id: "compare-charts" }, overlaidCharts(models, metrics)),
      h("h2", {}, "Side by side"),
      sideBySide(models, shown),
    ] : h("p", { class: "muted" }, "No models chosen yet: add some here, or tick them on the Models page."),
  ];
}, "Compare");
