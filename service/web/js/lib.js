// The one place pages talk to the API (JSON, images, event streams, with the bearer token when the
// service needs one), plus the DOM builder, the router and the chart every page shares.

const TOKEN_KEY = "classcomp.token";

// The token lives in this tab's sessionStorage: closing the tab forgets it.
export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function withToken(headers = {}) {
  const value = token.get();
  return value ? { ...headers, Authorization: `Bearer ${value}` } : headers;
}

async function request(path, { method = "GET", json, body, signal, headers = {} } = {}) {
  const init = { method, signal, headers: withToken(headers), body };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let code = "http_error", message = `${method} ${path}: HTTP ${response.status}`;
    try {
      ({ code, message } = (await response.json()).error);
    } catch { /* not our JSON error: keep the status line */ }
    if (response.status === 401 || code === "invalid_token") {
      window.dispatchEvent(new CustomEvent("classcomp:auth", { detail: message }));
    }
    throw new ApiError(response.status, code, message);
  }
  return response;
}

/** JSON from the API (null for 204). Throws ApiError with the service's code and message. */
export async function api(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

/** Every item of a paged list (GET path, e.g. /v1/models): the API gives 200 at most per request. */
export async function allItems(path, signal) {
  const items = [];
  for (;;) {
    const page = await api(`${path}?limit=200&offset=${items.length}`, { signal });
    items.push(...page.items);
    if (!page.items.length || items.length >= page.total) return items;
  }
}

let documentPromise = null; // fetched once per visit of the dashboard: it changes only with the service

/** The API's OpenAPI document: pages read its enums, defaults and examples rather than keep copies. */
export function openApi() {
  documentPromise ??= api("/openapi.json").catch((error) => {
    documentPromise = null; // let the next visit try again
    throw error;
  });
  return documentPromise;
}

/** An object URL for an image the API returns (a plain <img src> could not carry the token). */
export async function imageUrl(path, options) {
  const response = await request(path, options);
  return URL.createObjectURL(await response.blob());
}

/**
 * Read a server-sent event stream (GET path) with fetch, so the token goes along (EventSource
 * sends no headers). Calls onEvent(type, data, id) for each event, data parsed as JSON.
 * Resolves when the server closes the stream; `lastEventId` resumes after that event.
 */
export async function stream(path, onEvent, { signal, lastEventId } = {}) {
  const headers = { Accept: "text/event-stream" };
  if (lastEventId != null) headers["Last-Event-ID"] = String(lastEventId);
  const response = await request(path, { signal, headers });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message", id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // a keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = text;
        else if (field === "id") id = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onEvent(type, JSON.parse(data.join("\n")), id);
    }
  }
}

/** h("a", {href: "#/jobs", class: "x", onclick: fn}, "text", child, [more]) -> an element. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value == null || value === false) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "style" && typeof value === "object") Object.assign(element.style, value);
    else if (key in element && typeof value !== "string") element[key] = value; // checked, value, disabled
    else element.setAttribute(key, value === true ? "" : value);
  }
  element.append(...children.flat(Infinity).filter((c) => c != null && c !== false));
  return element;
}

// --- router: "#/models/abc?sort=accuracy" runs the page registered for "/models/:id" ---------------

const routes = [];

/** Register a page: render({params, query, signal}) returns the nodes of the page (or a promise of them). */
export function route(pattern, render, title) {
  const names = [];
  const regex = new RegExp("^" + pattern.replace(/:(\w+)/g, (_, name) => (names.push(name), "([^/]+)")) + "$");
  routes.push({ regex, names, render, title });
}

export function navigate(hash) {
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}

let current = null; // the page on screen: its AbortController stops its fetches and streams on leaving

async function show(main, fallback) {
  const [path, search = ""] = (location.hash.slice(1) || fallback).split("?");
  const match = routes.map((r) => [r, path.match(r.regex)]).find(([, m]) => m);
  current?.abort();
  const controller = (current = new AbortController());
  main.replaceChildren(h("p", { class: "muted" }, "Loading..."));
  if (!match) {
    main.replaceChildren(h("h1", {}, "Not found"), h("p", {}, `No page at ${path}.`));
    return;
  }
  const [r, m] = match;
  const params = Object.fromEntries(r.names.map((name, i) => [name, decodeURIComponent(m[i + 1])]));
  document.title = `classcomp - ${r.title ?? path}`;
  try {
    const nodes = await r.render({ params, query: new URLSearchParams(search), signal: controller.signal });
    // Nested arrays and null/false entries are allowed, as among h()'s children.
    if (!controller.signal.aborted) main.replaceChildren(...[nodes].flat(Infinity).filter((n) => n != null && n !== false));
  } catch (error) {
    if (controller.signal.aborted) return;
    main.replaceChildren(h("h1", {}, "Something went wrong"), errorBox(error));
  }
}

export function startRouter(main, fallback) {
  window.addEventListener("hashchange", () => show(main, fallback));
  show(main, fallback);
}

// --- small pieces every page uses ------------------------------------------------------------------

export function errorBox(error) {
  const code = error instanceof ApiError ? `${error.status} ${error.code}: ` : "";
  return h("div", { class: "error", role: "alert" }, code + error.message);
}

export const percent = (x, digits = 2) => (x == null ? "-" : `${(100 * x).toFixed(digits)}%`);

export function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "-";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "-");

/** A progress bar; `eta` in seconds or null. */
export function progressBar({ epoch, epochs }, eta = null) {
  const share = epochs ? epoch / epochs : 0;
  return h("div", { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
                    "aria-valuenow": String(Math.round(100 * share)) },
    h("div", { class: "bar", style: { width: `${(100 * share).toFixed(1)}%` } }),
    h("span", { class: "label" }, `${epoch} / ${epochs} epochs (${Math.round(100 * share)}%)` +
      (eta != null ? `, ETA ${duration(eta)}` : "")));
}

// --- line chart: a hand-written SVG, so the pages need nothing from outside ---------------------------

export const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, value);
  element.append(...children);
  return element;
}

function niceTicks(lo, hi, count = 5) {
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count || 1)));
  const best = [1, 2, 5, 10].map((m) => m * step).find((st) => (hi - lo) / st <= count) ?? 10 * step;
  const ticks = [];
  for (let t = Math.ceil(lo / best) * best; t <= hi + best * 1e-9; t += best) ticks.push(+t.toFixed(10));
  return ticks;
}

/**
 * lineChart({series: [{name, points: [[x, y], ...]}], xLabel, yLabel, yMin, yMax}) -> <svg>.
 * Series keep their colour by position, so redrawing with more points does not recolour them.
 */
export function lineChart({ series, xLabel = "epoch", yLabel = "", yMin, yMax, width = 560, height = 280 }) {
  const m = { left: 56, right: 12, top: 12, bottom: 40 };
  const all = series.flatMap((se) => se.points).filter(([, y]) => y != null && isFinite(y));
  const xs = all.map(([x]) => x), ys = all.map(([, y]) => y);
  let [x0, x1] = xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
  let [y0, y1] = [yMin ?? (ys.length ? Math.min(...ys) : 0), yMax ?? (ys.length ? Math.max(...ys) : 1)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const X = (x) => m.left + ((x - x0) / (x1 - x0)) * (width - m.left - m.right);
  const Y = (y) => height - m.bottom - ((y - y0) / (y1 - y0)) * (height - m.top - m.bottom);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": yLabel });
  for (const t of niceTicks(y0, y1)) {
    svg.append(s("line", { x1: m.left, x2: width - m.right, y1: Y(t), y2: Y(t), class: "grid" }),
               s("text", { x: m.left - 6, y: Y(t) + 4, "text-anchor": "end" }, String(t)));
  }
  for (const t of niceTicks(x0, x1).filter(Number.isInteger)) {
    svg.append(s("text", { x: X(t), y: height - m.bottom + 16, "text-anchor": "middle" }, String(t)));
  }
  svg.append(s("text", { x: (m.left + width - m.right) / 2, y: height - 6, "text-anchor": "middle" }, xLabel),
             s("text", { x: 14, y: (m.top + height - m.bottom) / 2, "text-anchor": "middle",
                         transform: `rotate(-90 14 ${(m.top + height - m.bottom) / 2})` }, yLabel));
  series.forEach((se, i) => {
    const points = se.points.filter(([, y]) => y != null && isFinite(y));
    const colour = se.colour ?? PALETTE[i % PALETTE.length];
    svg.append(s("polyline", { points: points.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "), fill: "none",
                               stroke: colour, "stroke-width": 2, "data-series": se.name }));
    for (const [x, y] of points) svg.append(s("circle", { cx: X(x), cy: Y(y), r: 2.5, fill: colour }));
  });
  const legend = h("div", { class: "legend" },
    series.map((se, i) => h("span", {}, h("i", { style: { background: se.colour ?? PALETTE[i % PALETTE.length] } }), se.name)));
  return h("figure", { class: "chart-box" }, svg, series.length > 1 ? legend : null);
}

/**
 * An <img> of a PNG the API renders (a figure, a reconstruction), inside a <figure> that says
 * "Rendering..." until it arrives and shows the API's error if it does not. Its object URL is
 * freed when the page's signal aborts.
 */
export function apiImage(path, { alt = "", caption = null, signal, ...options } = {}) {
  const status = h("p", { class: "muted" }, "Rendering...");
  const box = h("figure", { class: "api-image" }, status, caption ? h("figcaption", {}, caption) : null);
  imageUrl(path, { signal, ...options }).then((url) => {
    signal?.addEventListener("abort", () => URL.revokeObjectURL(url));
    // A link to the image itself, to see a small figure at full size.
    status.replaceWith(h("a", { href: url, target: "_blank" }, h("img", { src: url, alt, class: "figure" })));
  }, (error) => {
    if (!signal?.aborted) status.replaceWith(errorBox(error));
  });
  return box;
}
