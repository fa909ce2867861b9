// "/submit": a form for POST /v1/jobs. The JSON body is the one source of truth: the form's fields edit
// parts of it and the textarea shows all of it (and edits it, so a field the form lacks is still
// reachable). The kinds' presets, model names and defaults come from the API's own OpenAPI document, so
// the form follows the API without a second copy of either.
//
// The API alone judges the body: fields carry no min/max, so a person sees the API's message naming the
// field rather than a browser tooltip that knows less.
import { api, errorBox, h, navigate, openApi, route } from "./lib.js";

const KINDS = ["train", "experiment", "error-analysis"];
const KIND_SCHEMA = { train: "TrainJob", experiment: "ExperimentJob", "error-analysis": "ErrorAnalysisJob" };
const ALL = KINDS;

// What the form shows, per kind. `path` is where the value lives in the body; the control is named after
// it and has the id "f-" + path with dots as dashes (training.epochs -> #f-training-epochs).
const FIELDS = [
  { legend: "What to train" },
  { path: "model", label: "Model", kinds: ["train"], type: "select", options: (s) => s.models },
  { path: "init_from", label: "Encoder from resnet (model id or name/version)", kinds: ["train"], type: "text",
    when: (body) => body.model === "unet-pretrained" },
  { path: "name", label: "Registered name", kinds: ["train"], type: "text",
    hint: "optional: the model becomes its next version; by default architecture-dataset-classes-condition" },
  // unet-pretrained needs a trained resnet, which the error analysis does not make.
  { path: "models", label: "Models", kinds: ["experiment", "error-analysis"], type: "checks",
    options: (s, kind) => (kind === "error-analysis" ? s.models.filter((m) => m !== "unet-pretrained") : s.models) },
  { path: "conditions", label: "Conditions", kinds: ["experiment"], type: "checks", options: (s) => s.conditions },
  { legend: "Images" },
  { path: "dataset.name", label: "Dataset", kinds: ["train", "experiment"], type: "select", options: (s) => s.datasets },
  { path: "dataset.classes", label: "Classes", kinds: ["train", "experiment"], type: "ints",
    when: (body) => body.dataset?.name !== "gaussian", hint: "labels 0-9, e.g. 0, 1" },
  { path: "dataset.condition", label: "Condition", kinds: ["train"], type: "select", options: (s) => s.conditions },
  { path: "dataset.image_size", label: "Image size", kinds: ALL, type: "int", hint: "pixels per side" },
  { path: "dataset.n_train", label: "Training images", kinds: ["train", "experiment"], type: "int",
    when: (body) => body.dataset?.name === "gaussian" },
  { path: "dataset.n_val", label: "Validation images", kinds: ["train", "experiment"], type: "int",
    when: (body) => body.dataset?.name === "gaussian" },
  { path: "n_train", label: "Training images per repeat", kinds: ["error-analysis"], type: "int" },
  { path: "n_eval", label: "Evaluation images", kinds: ["error-analysis"], type: "int" },
  { path: "repeats", label: "Repeats", kinds: ["error-analysis"], type: "int" },
  { legend: "Training" },
  { path: "training.preset", label: "Preset", kinds: ALL, type: "select", options: (s) => s.presets },
  { path: "training.epochs", label: "Epochs", kinds: ALL, type: "int" },
  { path: "training.batch_size", label: "Batch size", kinds: ALL, type: "int" },
  { path: "training.learning_rate", label: "Learning rate", kinds: ALL, type: "float" },
  { path: "training.width", label: "Width", kinds: ALL, type: "float", hint: "1 is the paper's size" },
];

// --- the body as nested plain data -------------------------------------------------------------------

const getPath = (body, path) => path.split(".").reduce((value, key) => value?.[key], body);

/** Set a value deep in the body; undefined removes the key, so the API's default (or preset) applies. */
function setPath(body, path, value) {
  const keys = path.split(".");
  const last = keys.pop();
  let node = body;
  for (const key of keys) {
    if (typeof node[key] !== "object" || node[key] === null) node[key] = {};
    node = node[key];
  }
  if (value === undefined) delete node[last];
  else node[last] = value;
}

const clone = (value) => JSON.parse(JSON.stringify(value));

/** JSON indented by two spaces, but a list of numbers or names on one line: "classes": [0, 1]. */
function pretty(value, indent = "") {
  const inner = indent + "  ";
  if (Array.isArray(value)) {
    if (value.every((v) => v === null || typeof v !== "object")) return `[${value.map((v) => JSON.stringify(v)).join(", ")}]`;
    return `[\n${value.map((v) => inner + pretty(v, inner)).join(",\n")}\n${indent}]`;
  }
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pretty(v, inner)}`).join(",\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}

// --- what the API's OpenAPI document tells the form ----------------------------------------------------

function readSchema(doc) {
  const components = doc.components.schemas;
  const body = doc.paths["/v1/jobs"].post.requestBody.content["application/json"];
  const examples = Object.entries(body.examples ?? {}).map(([key, { summary, value }]) => ({ key, summary, value }));
  return {
    components,
    examples,
    models: components.TrainJob.properties.model.enum,
    datasets: components.DatasetConfig.properties.name.enum,
    conditions: components.DatasetConfig.properties.condition.enum,
    presets: components.TrainingConfig.properties.preset.enum,
  };
}

/** The default of a body field for a kind, following the schema's references; undefined if none. */
function defaultOf(schema, kind, path) {
  let node = schema.components[KIND_SCHEMA[kind]];
  const keys = path.split(".");
  for (const [i, key] of keys.entries()) {
    const property = node?.properties?.[key];
    if (i === keys.length - 1) return property?.default;
    const ref = property?.$ref ?? property?.anyOf?.find((s) => s.$ref)?.$ref;
    node = ref ? schema.components[ref.split("/").pop()] : undefined;
  }
}

// --- one control per field -----------------------------------------------------------------------------

const idOf = (path) => `f-${path.replaceAll(".", "-")}`;

/** The control of a field: {row, read(), write(value)}; `onInput` runs after the person changes it. */
function control(field, schema, kind, onInput) {
  const id = idOf(field.path);
  const fallback = defaultOf(schema, kind, field.path);
  const placeholder = fallback != null ? String(fallback) : field.path.startsWith("training.") ? "preset" : "";
  const hint = field.hint ? h("span", { class: "muted hint" }, ` ${field.hint}`) : null;

  if (field.type === "checks") {
    const boxes = field.options(schema, kind).map((option) =>
      h("input", { type: "checkbox", name: field.path, value: option, id: `${id}-${option}`, onchange: onInput }));
    const row = h("fieldset", { class: "checks", id }, h("legend", {}, field.label),
      boxes.map((box) => h("label", { for: box.id }, box, ` ${box.value}`)));
    return {
      row,
      read: () => boxes.filter((b) => b.checked).map((b) => b.value),
      write: (value) => boxes.forEach((b) => { b.checked = Array.isArray(value) && value.includes(b.value); }),
    };
  }

  let input, read, write;
  if (field.type === "select") {
    input = h("select", { onchange: onInput }, field.options(schema, kind).map((o) => h("option", { value: o }, o)));
    read = () => input.value;
    write = (value) => { input.value = value ?? fallback ?? ""; };
  } else if (field.type === "ints") {
    input = h("input", { type: "text", placeholder: (fallback ?? []).join(", "), oninput: onInput });
    // A token that is not a number goes to the API as it is, which says what is wrong with it.
    const tokens = () => input.value.trim().split(/[\s,]+/).filter(Boolean);
    read = () => (tokens().length ? tokens().map((t) => (isNaN(Number(t)) ? t : Number(t))) : undefined);
    write = (value) => { input.value = Array.isArray(value) ? value.join(", ") : ""; };
  } else {
    const numeric = field.type === "int" || field.type === "float";
    const step = field.type === "float" ? "any" : null;
    input = h("input", { type: numeric ? "number" : "text", step, placeholder, oninput: onInput });
    read = () => (input.value.trim() === "" ? undefined : numeric ? Number(input.value) : input.value.trim());
    write = (value) => { input.value = value ?? ""; };
  }
  Object.assign(input, { id, name: field.path });
  return { row: h("div", { class: "field" }, h("label", { for: id }, field.label, hint), input), read, write };
}

// --- the page --------------------------------------------------------------------------------------------

class SubmitForm {
  /** start: {kind, exampleKey, extra}: the kind and example to show first, `extra` an example of its own. */
  constructor(schema, signal, start) {
    this.schema = schema;
    this.signal = signal;
    this.body = {};
    this.controls = [];

    this.kind = h("select", { id: "submit-kind", name: "kind", onchange: () => this.showKind(this.kind.value) },
      KINDS.map((k) => h("option", { value: k }, k)));
    this.example = h("select", { id: "submit-example", name: "example",
                                 onchange: () => this.showKind(this.body.kind, this.example.value) });
    this.fields = h("div", { id: "submit-fields" });
    this.json = h("textarea", { id: "submit-json", name: "json", rows: 28, spellcheck: "false", oninput: () => this.editJson() });
    this.jsonNote = h("p", { id: "submit-json-note", class: "muted" });
    this.error = h("div", { id: "submit-error" });
    this.button = h("button", { id: "submit-button", type: "submit" }, "Submit job");
    this.extraExamples = start.extra ? [start.extra] : []; // "the job you came from"
    this.showKind(start.kind, start.exampleKey);
  }

  nodes() {
    return [
      h("h1", {}, "Submit a job"),
      h("form", { id: "submit-form", class: "stack", novalidate: true,
                  onsubmit: (event) => { event.preventDefault(); this.submit(); } },
        h("div", { class: "row" },
          h("div", { class: "field" }, h("label", { for: "submit-kind" }, "Kind"), this.kind),
          h("div", { class: "field" }, h("label", { for: "submit-example" }, "Start from"), this.example)),
        h("div", { class: "submit-grid" },
          this.fields,
          h("div", {},
            h("label", { for: "submit-json" }, "JSON body (sent as it is; edit it to set any field of the API)"),
            this.json, this.jsonNote)),
        this.error,
        h("p", {}, this.button, " ", h("a", { href: "/docs#/jobs/submit_job_v1_jobs_post" }, "the fields in the API reference"))),
    ];
  }

  /** Show the form of a kind, filled from the given example or else that kind's first one. */
  showKind(kind, exampleKey) {
    const examples = this.listExamples(kind);
    const chosen = examples.find((e) => e.key === exampleKey) ?? examples[0];
    if (chosen) this.example.value = chosen.key;
    this.body = clone(chosen?.value ?? { kind });
    this.buildFields(kind);
    this.writeControls();
    this.showJson();
  }

  /** The examples of a kind into the "Start from" list, and the kind into its own. */
  listExamples(kind) {
    const examples = [...this.extraExamples, ...this.schema.examples].filter((e) => e.value.kind === kind);
    this.kind.value = kind;
    this.example.replaceChildren(...examples.map((e) => h("option", { value: e.key }, e.summary)));
    return examples;
  }

  buildFields(kind) {
    this.controls = [];
    let group = null;
    const groups = [];
    for (const field of FIELDS) {
      if (field.legend) {
        group = h("fieldset", { class: "group" }, h("legend", {}, field.legend));
        groups.push(group);
        continue;
      }
      if (!field.kinds.includes(kind)) continue;
      const c = { field, ...control(field, this.schema, kind, () => this.editField(c)) };
      this.controls.push(c);
      group.append(c.row);
    }
    this.fields.replaceChildren(...groups.filter((g) => g.childElementCount > 1));
  }

  /** Body -> form. */
  writeControls() {
    for (const c of this.controls) c.write(getPath(this.body, c.field.path));
    this.showRelevant();
  }

  showJson() {
    this.json.value = pretty(this.body);
    this.jsonNote.textContent = "";
  }

  /**
   * Hide the fields that mean nothing for this body (the Gaussian images' sizes on MNIST, say). With
   * `prune`, after the person's own change, a field that this hides also leaves the body: the resnet to
   * start from, once the model is no longer unet-pretrained, would only make the API refuse the job.
   */
  showRelevant({ prune = false } = {}) {
    for (const c of this.controls) {
      const relevant = !c.field.when || c.field.when(this.body);
      if (prune && !relevant && !c.row.hidden) setPath(this.body, c.field.path, undefined);
      c.row.hidden = !relevant;
    }
  }

  editField(c) {
    setPath(this.body, c.field.path, c.read());
    this.showRelevant({ prune: true });
    this.showJson();
  }

  editJson() {
    let body;
    try {
      body = JSON.parse(this.json.value);
    } catch (error) {
      this.jsonNote.textContent = `Not JSON yet: ${error.message}`;
      return;
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      this.jsonNote.textContent = "The body must be a JSON object.";
      return;
    }
    this.jsonNote.textContent = "";
    const kindChanged = body.kind !== this.body.kind && KINDS.includes(body.kind);
    this.body = body;
    if (kindChanged) {
      this.listExamples(body.kind);
      this.buildFields(body.kind);
    }
    this.writeControls();
  }

  async submit() {
    this.error.replaceChildren();
    let body;
    try {
      body = JSON.parse(this.json.value);
    } catch (error) {
      this.error.replaceChildren(errorBox(new Error(`The JSON body does not parse: ${error.message}`)));
      return;
    }
    this.button.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", json: body, signal: this.signal });
      navigate(`#/jobs/${job.id}`);
    } catch (error) {
      if (this.signal.aborted) return;
      this.error.replaceChildren(errorBox(error));
      this.button.disabled = false;
    }
  }
}

/** Where the form starts: ?from=<job id> (that job's request, to run it again), else ?kind= and ?example=. */
async function startingPoint(schema, query, signal) {
  const from = query.get("from");
  if (from) {
    const job = await api(`/v1/jobs/${encodeURIComponent(from)}`, { signal });
    const extra = { key: `job-${job.id}`, summary: `as job ${job.id.slice(0, 8)}`, value: { kind: job.kind, ...job.request } };
    return { kind: job.kind, exampleKey: extra.key, extra };
  }
  const byKey = schema.examples.find((e) => e.key === query.get("example"));
  const kind = byKey?.value.kind ?? (KINDS.includes(query.get("kind")) ? query.get("kind") : "train");
  return { kind, exampleKey: byKey?.key };
}

route("/submit", async ({ query, signal }) => {
  const schema = readSchema(await openApi());
  const form = new SubmitForm(schema, signal, await startingPoint(schema, query, signal));
  return form.nodes();
}, "Submit a job");
