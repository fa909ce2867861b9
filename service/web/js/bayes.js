// The Bayes-risk calculator: the optimal classifier of two Gaussian classes (paper eq. 7-11) and its
// risk, from POST /v1/reports/bayes-risk. The form takes what the API takes: means and covariances
// as scalars, vectors (a covariance vector is its diagonal) or, in JSON, full matrices.
import { api, errorBox, h, percent, route } from "./lib.js";

const PRESETS = [
  { title: "The paper's Gaussian images (32×32, mean ∓1, std 3)",
    values: { mean0: "-1", mean1: "1", cov0: "9", cov1: "9", dim: "1024" } },
  { title: "One dimension, means 1 apart",
    values: { mean0: "0", mean1: "1", cov0: "1", cov1: "1", dim: "1" } },
  { title: "2-D, different covariances (Monte Carlo)",
    values: { mean0: "0, 0", mean1: "1, 1", cov0: "[[1, 0.5], [0.5, 1]]", cov1: "2, 0.5", prior1: "0.3" } },
];
const DEFAULTS = { mean0: "", mean1: "", cov0: "", cov1: "", dim: "", prior1: "0.5", method: "auto",
                   n_samples: "", seed: "0", confidence: "0.95" };

/** A mean or covariance field: a number, numbers separated by commas or spaces (a vector), or JSON. */
function parseArray(name, text) {
  const t = text.trim();
  if (!t) throw new Error(`${name}: required`);
  if (t.startsWith("[")) {
    try {
      return JSON.parse(t);
    } catch {
      throw new Error(`${name}: not valid JSON`);
    }
  }
  const numbers = t.split(/[\s,]+/).filter(Boolean).map(Number);
  if (numbers.some((x) => !Number.isFinite(x))) throw new Error(`${name}: write a number, numbers separated by commas, or a JSON matrix`);
  return numbers.length === 1 ? numbers[0] : numbers;
}

/** The request body; optional fields left empty are left out, so the API's defaults apply. */
function requestBody(fields) {
  const body = {};
  for (const name of ["mean0", "mean1", "cov0", "cov1"]) body[name] = parseArray(name, fields[name].value);
  for (const name of ["dim", "n_samples", "prior1", "confidence"]) {
    if (fields[name].value.trim()) body[name] = Number(fields[name].value);
  }
  // Empty seed: a fresh one (null), not the API's default 0.
  body.seed = fields.seed.value.trim() ? Number(fields.seed.value) : null;
  body.method = fields.method.value;
  return body;
}

/** Numbers in full up to 8 values; longer vectors and matrices summarised. */
function valueText(value) {
  if (typeof value === "number") return String(+value.toPrecision(6));
  if (!Array.isArray(value)) return String(value);
  if (Array.isArray(value[0])) return `${value.length}×${value[0].length} matrix`;
  const shown = value.slice(0, 8).map((x) => +x.toPrecision(4)).join(", ");
  return value.length > 8 ? `[${shown}, ...] (${value.length} values)` : `[${shown}]`;
}

function ruleList(rule) {
  return h("dl", { class: "facts", id: "bayes-rule" }, Object.entries(rule).flatMap(([key, value]) =>
    [h("dt", {}, key.replaceAll("_", " ")), h("dd", {}, key === "predict_1_if" ? h("code", {}, value) : valueText(value))]));
}

function resultView(body, result) {
  const interval = result.method === "monte_carlo"
    ? `${percent(result.confidence, 0)} interval [${result.ci_low.toPrecision(4)}, ${result.ci_high.toPrecision(4)}] from ${result.n_samples.toLocaleString("en")} draws`
    : "exact (closed form)";
  return [
    h("p", { class: "big" }, "Bayes risk R(h*) = ",
      h("strong", { id: "bayes-risk", "data-value": String(result.risk) }, result.risk.toPrecision(6)),
      ` (${percent(result.risk, 4)} of images misclassified at best)`),
    h("p", { id: "bayes-method" }, `${result.method.replace("_", " ")}: ${interval}. Dimension ${result.dim}` +
      (result.mahalanobis != null ? `, Mahalanobis distance Δ = ${result.mahalanobis.toPrecision(6)}.` : ".")),
    h("h3", {}, `The rule (${result.rule.kind})`),
    ruleList(result.rule),
    h("details", {}, h("summary", {}, "The request sent"), h("pre", {}, JSON.stringify(body, null, 1))),
  ];
}

route("/bayes", () => {
  const fields = Object.fromEntries(Object.entries(DEFAULTS).map(([name, value]) => [name, name === "method"
    ? h("select", { id: "bayes-method-input", name }, ["auto", "closed_form", "monte_carlo"].map((m) => h("option", { value: m }, m.replace("_", " "))))
    : h("input", { id: `bayes-${name.replace("_", "-")}`, name, value, size: 24 })]));
  const output = h("div", { id: "bayes-result", class: "card", "aria-live": "polite" },
    h("p", { class: "muted" }, "Fill in the two classes, or start from an example."));
  const submit = h("button", { type: "submit", id: "bayes-submit" }, "Compute");

  function fill(values) {
    for (const [name, value] of Object.entries({ ...DEFAULTS, ...values })) fields[name].value = value;
  }

  async function compute(event) {
    event.preventDefault();
    let body;
    try {
      body = requestBody(fields);
    } catch (error) {
      output.replaceChildren(errorBox(error));
      return;
    }
    submit.disabled = true;
    output.replaceChildren(h("p", { class: "muted" }, "Computing..."));
    try {
      output.replaceChildren(...resultView(body, await api("/v1/reports/bayes-risk", { method: "POST", json: body })));
    } catch (error) {
      output.replaceChildren(errorBox(error));
    } finally {
      submit.disabled = false;
    }
  }

  const field = (name, label, hint) => h("div", {}, h("label", { for: fields[name].id }, label), fields[name],
    hint ? h("div", { class: "muted hint" }, hint) : null);
  fill(PRESETS[0].values);
  return [
    h("h1", {}, "Bayes risk of two Gaussian classes"),
    h("p", { class: "muted" }, "Class c ~ N(mean_c, cov_c). Means: a number (the same on every coordinate) or a vector. " +
      "Covariances: a variance, a diagonal, or a full matrix in JSON ([[1, 0.5], [0.5, 1]]). Equal covariances have a " +
      "closed form, Φ(-Δ/2) for equal priors; others are estimated by Monte Carlo."),
    h("p", {}, "Examples: ", PRESETS.map((p, i) => h("button", { type: "button", class: "secondary preset",
      "data-preset": String(i), onclick: () => fill(p.values) }, p.title))),
    h("form", { id: "bayes-form", class: "stack bayes-form", onsubmit: compute },
      h("div", { class: "bayes-grid" },
        field("mean0", "mean of class 0"), field("mean1", "mean of class 1"),
        field("cov0", "covariance of class 0"), field("cov1", "covariance of class 1"),
        field("dim", "dimension", "needed when every mean and covariance is a number"),
        field("prior1", "P(Y = 1)"),
        field("method", "method"),
        field("n_samples", "Monte-Carlo draws", "empty: the API's default"),
        field("seed", "seed", "empty: a fresh one"),
        field("confidence", "confidence of the interval")),
      h("p", {}, submit)),
    output,
  ];
}, "Bayes risk");
