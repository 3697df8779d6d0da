// The page at / (service/page.py): plain DOM, same origin only, no library and no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const ROUNDS = 3; // "all depths" shows the median of this many answers per model: one is noisy
const SVG = "http://www.w3.org/2000/svg";
let models = []; // GET /models
let image = null; // {blob, name, label?, index?}: label and test index are known for the samples only
let ticket = 0; // the latest request wins when answers cross

class ServiceError extends Error {
  constructor(status, body) {
    super(`${status} ${body.code}: ${body.error}`);
    this.status = status;
    this.body = body;
  }
}

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

const pct = (x) => (100 * x).toFixed(1) + "%";
const ms = (x) => (x == null ? "–" : x.toFixed(1) + " ms");
const accuracy = (m) => (m.test_accuracy == null ? "–" : m.test_accuracy.toFixed(2) + "%");
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const kind = (m) => (m.residual ? "residual" : "plain");

function serverTiming(response) {
  // "preprocess;dur=0.61, model;dur=2.43, total;dur=4.02" (service/timing.py) -> {preprocess: 0.61, ...}
  const out = {};
  for (const part of (response.headers.get("Server-Timing") || "").split(",")) {
    const m = part.trim().match(/^([\w-]+);dur=([\d.]+)/);
    if (m) out[m[1]] = parseFloat(m[2]);
  }
  return out;
}

async function classify(model, topK) {
  const form = new FormData();
  form.append("image", image.blob, image.name);
  form.append("model", model);
  form.append("top_k", String(topK));
  const t0 = performance.now();
  let response;
  try {
    response = await fetch("/classify", { method: "POST", body: form });
  } catch (e) {
    throw new Error(`no answer from the service (${e.message})`);
  }
  const body = await response.json();
  const roundTrip = performance.now() - t0;
  if (!response.ok) throw new ServiceError(response.status, body);
  return { body, roundTrip, timing: serverTiming(response) };
}

function showError(e) {
  const box = $("error");
  box.replaceChildren();
  if (e instanceof ServiceError) {
    box.append(el("p", "", `The service answered ${e.status} (${e.body.code}): ${e.body.error}`),
      el("code", "", JSON.stringify(e.body)));
  } else {
    box.append(el("p", "", e.message));
  }
  box.hidden = false;
  $("answer").hidden = true; // an answer about another image would read as this one's
  $("status").textContent = "Refused.";
}

async function busy(what, job) {
  const mine = ++ticket;
  $("status").textContent = what;
  $("error").hidden = true;
  document.body.setAttribute("aria-busy", "true");
  try {
    const done = await job(() => mine === ticket);
    if (mine === ticket) $("status").textContent = done;
  } catch (e) {
    if (mine === ticket) showError(e);
  } finally {
    if (mine === ticket) document.body.removeAttribute("aria-busy");
  }
}

function showCard(m) {
  const facts = [["name", m.name], ["depth", `${m.depth} layers`], ["kind", kind(m)],
    ["test accuracy", accuracy(m)],
    ["precision", m.precision], ["provider", m.provider.replace("ExecutionProvider", "")]];
  $("card").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", String(v))]));
}

function showAnswer({ body, roundTrip, timing }) {
  if ($("preview").src.startsWith("blob:")) URL.revokeObjectURL($("preview").src);
  $("preview").src = URL.createObjectURL(image.blob);
  const top = body.predictions[0];
  $("verdict").textContent = image.label == null ? `${body.model}: ${top.label}`
    : `${body.model}: ${top.label} — ${top.label === image.label ? "right" : `wrong, it is a ${image.label}`}`
      + ` (test image ${image.index})`;
  $("predictions").replaceChildren(...body.predictions.map((p) => {
    const bar = el("span", "bar");
    bar.style.width = pct(p.probability);
    return el("li", p.label === image.label ? "truth" : "", el("span", "label", p.label),
      el("span", "track", bar), el("span", "prob", pct(p.probability)));
  }));
  const figures = [["model", timing.model], ["decode", timing.preprocess], ["in the service", timing.total],
    ["round trip", roundTrip]];
  $("timing").replaceChildren(...figures.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", ms(v))]));
  $("answer").hidden = false;
}

function needImage() {
  if (!image) $("status").textContent = "Pick an image first.";
  return !image;
}

async function classifyOne() {
  if (needImage()) return;
  await busy("Classifying…", async (current) => {
    const result = await classify($("model").value, $("top-k").value);
    if (current()) showAnswer(result);
    return `Answered in ${ms(result.roundTrip)}.`;
  });
}

async function compareDepths() {
  if (needImage()) return;
  await busy("Asking every model…", async (current) => {
    const rows = [];
    for (const m of models) {
      const runs = [];
      for (let i = 0; i <= ROUNDS; i++) runs.push(await classify(m.name, 1));
      runs.shift(); // a warm-up: the first answer after a pause pays for cold caches
      rows.push({ m, top: runs[0].body.predictions[0], model: median(runs.map((r) => r.timing.model)),
        roundTrip: median(runs.map((r) => r.roundTrip)) });
      if (!current()) return "";
    }
    showDepths(rows);
    return `${rows.length} models answered.`;
  });
}

function showDepths(rows) {
  $("rounds").textContent = ROUNDS;
  $("depth-rows").replaceChildren(...rows.map(({ m, top, model, roundTrip }) => {
    const cells = [m.name, m.depth, kind(m), top.label, pct(top.probability), ms(model), ms(roundTrip), accuracy(m)];
    return el("tr", top.label === image.label ? "truth" : "", ...cells.map((c) => el("td", "", String(c))));
  }));
  drawChart(rows.filter((r) => r.m.test_accuracy != null));
  $("depths").hidden = false;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}

function drawChart(rows) {
  // Accuracy (y) against the model's answer time (x), one mark per model: circle residual, square plain.
  const W = 520, H = 320, L = 52, R = 16, T = 16, B = 44;
  const xMax = Math.max(1, ...rows.map((r) => r.model)) * 1.15;
  const yMin = Math.floor(Math.min(100, ...rows.map((r) => r.m.test_accuracy)) / 10) * 10 - 5;
  const x = (v) => L + (v / xMax) * (W - L - R);
  const y = (v) => T + ((100 - v) / (100 - yMin)) * (H - T - B);
  const chart = $("chart");
  chart.replaceChildren();
  for (let v = Math.ceil(yMin / 10) * 10; v <= 100; v += 10) {
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }),
      svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, `${v}%`));
  }
  const step = niceStep(xMax);
  for (let v = 0; v <= xMax; v += step) {
    chart.append(svg("text", { x: x(v), y: H - B + 16, "text-anchor": "middle" }, `${+v.toFixed(2)}`));
  }
  chart.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }),
    svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }),
    svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, "model time (ms)"),
    svg("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle",
      transform: `rotate(-90 14 ${(T + H - B) / 2})` }, "test accuracy"));
  for (const k of ["residual", "plain"]) { // each kind's models joined in order of depth: the trade-off
    const line = rows.filter((r) => kind(r.m) === k).sort((a, b) => a.m.depth - b.m.depth);
    chart.append(svg("polyline", { class: k, points: line.map((r) => `${x(r.model)},${y(r.m.test_accuracy)}`).join(" ") }));
  }
  for (const { m, model } of rows) {
    const cx = x(model), cy = y(m.test_accuracy);
    chart.append(kind(m) === "plain"
      ? svg("rect", { x: cx - 5, y: cy - 5, width: 10, height: 10, class: "plain" })
      : svg("circle", { cx, cy, r: 6, class: "residual" }),
    svg("text", { x: cx + 8, y: cy - 6, class: "point" }, m.depth));
  }
}

function niceStep(max) {
  const raw = max / 5, p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((s) => s * p).find((s) => s >= raw);
}

function pressSample(button) {
  for (const b of document.querySelectorAll(".sample")) b.setAttribute("aria-pressed", String(b === button));
  $("depths").hidden = true; // its rows were another image's
}

function useFile(file) {
  if (!file) return;
  // The service refuses names with paths or control characters; the name does not matter here.
  image = { blob: file, name: file.name.replace(/[^\w.-]+/g, "_").slice(-100) || "upload" };
  pressSample(null);
  classifyOne();
}

async function useSample(sample, button) {
  const blob = await (await fetch(`/static/samples/${sample.file}`)).blob();
  image = { blob, name: sample.file, label: sample.label, index: sample.test_index };
  pressSample(button);
  classifyOne();
}

async function start() {
  const [served, samples] = await Promise.all([
    fetch("/models").then((r) => r.json()), fetch("/static/samples/samples.json").then((r) => r.json())]);
  models = served.models;
  $("model").replaceChildren(...models.map((m) =>
    new Option(`${m.name} (${m.depth} layers, ${kind(m)})`, m.name, m.default, m.default)));
  showCard(models.find((m) => m.default) || models[0]);
  $("samples").replaceChildren(...samples.map((s) => {
    const img = el("img");
    img.src = `/static/samples/${s.file}`;
    img.alt = "";
    const button = el("button", "sample", img, el("span", "", s.label));
    button.type = "button";
    button.title = `Fashion-MNIST test image ${s.test_index}`;
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", () => useSample(s, button));
    return button;
  }));
  $("file").addEventListener("change", (e) => useFile(e.target.files[0]));
  $("model").addEventListener("change", () => {
    showCard(models.find((m) => m.name === $("model").value));
    classifyOne();
  });
  $("top-k").addEventListener("change", classifyOne);
  $("classify").addEventListener("click", classifyOne);
  $("compare").addEventListener("click", compareDepths);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    useFile(e.dataTransfer.files[0]);
  });
  $("status").textContent = "Pick an image.";
}

start().catch((e) => showError(e));
