// The cvtasks playground: lists the served models, sends an image (or a seed) to a typed route
// (POST /v1/models/{name}/{verb}) and draws the JSON answer. Plain JS, no build step, nothing
// loaded from the network but this server.
"use strict";

// What the page asks of each task: the route's verb, its options (by the route's own option
// names; `local` ones only change the drawing) and how the answer is drawn.
const TASKS = {
  detection: {
    verb: "detect",
    options: [
      { name: "score_threshold", label: "score threshold", type: "number", min: 0, max: 1, step: 0.05 },
      { name: "max_detections", label: "max boxes", type: "number", min: 1, step: 1 },
    ],
    render: renderDetections,
  },
  segmentation: {
    verb: "segment",
    options: [
      { name: "alpha", label: "mask opacity", type: "range", min: 0, max: 1, step: 0.05, value: 0.5, local: true },
    ],
    render: renderSegmentation,
  },
  captioning: {
    verb: "caption",
    options: [
      { name: "beam_size", label: "beam size", type: "number", min: 1, max: 20, step: 1, value: 3 },
      { name: "num_captions", label: "captions", type: "number", min: 1, max: 20, step: 1, value: 3 },
    ],
    render: renderCaptions,
  },
  classification: {
    verb: "classify",
    options: [
      { name: "top_k", label: "top k", type: "number", min: 1, step: 1, value: 5 },
      { name: "explain", label: "Grad-CAM", type: "checkbox" },
    ],
    render: renderClasses,
  },
  generation: {
    verb: (values) => (values.mode === "interpolation" ? "interpolate" : "generate"),
    noImage: true,
    options: [
      { name: "mode", label: "draw", type: "select", choices: ["grid", "interpolation"], local: true },
      { name: "seed", label: "seed", type: "number", min: 0, step: 1, value: 0, mode: "grid" },
      { name: "count", label: "images", type: "number", min: 1, max: 64, step: 1, value: 16, mode: "grid" },
      { name: "start_seed", label: "from seed", type: "number", min: 0, step: 1, value: 0, mode: "interpolation" },
      { name: "end_seed", label: "to seed", type: "number", min: 0, step: 1, value: 1, mode: "interpolation" },
      { name: "steps", label: "steps", type: "number", min: 2, max: 64, step: 1, value: 8, mode: "interpolation" },
    ],
    render: renderImages,
  },
};
const TIMINGS = ["decode_ms", "queue_ms", "inference_ms", "postprocess_ms", "total_ms"];

const $ = (id) => document.getElementById(id);
const state = { models: [], file: null, palette: [] };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function headers(extra = {}) {
  const token = $("token").value.trim();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function answer(response) {
  const kind = response.headers.get("content-type") || "";
  const body = kind.includes("json") ? await response.json() : { error: await response.text() };
  if (!response.ok) throw new Error(`${response.status}: ${body.error || response.statusText}`);
  return body;
}

function color(label) {
  const [r, g, b] = state.palette[label % state.palette.length] || [255, 0, 0];
  return { r, g, b, css: `rgb(${r}, ${g}, ${b})` };
}

// ---------------------------------------------------------------- the model list

async function loadModels() {
  const status = $("models-status");
  try {
    const body = await answer(await fetch("/v1/models", { headers: headers() }));
    state.models = body.models || [];
  } catch (err) {
    status.textContent = `Could not list the models (${err.message}).`;
    status.className = "status error";
    return;
  }
  status.textContent = `${state.models.length} model(s) served.`;
  status.className = "status";
  const rows = $("models").querySelector("tbody");
  const select = $("model");
  const chosen = select.value;
  rows.replaceChildren();
  select.replaceChildren();
  for (const m of state.models) {
    const classes = m.classes.length > 8 ? `${m.classes.slice(0, 8).join(", ")} … (+${m.classes.length - 8})` : m.classes.join(", ");
    const ready = m.ready ? "ready" : "loading";
    rows.append(
      el("tr", { "data-model": m.name },
        el("td", { text: m.name + (m.is_default ? " (default)" : "") }), el("td", { text: m.task }),
        el("td", { text: m.version }), el("td", { text: m.device }), el("td", { text: classes || "—" }),
        el("td", { text: ready })),
    );
    select.append(el("option", { value: m.name, text: `${m.name} (${m.task})` }));
  }
  if (state.models.some((m) => m.name === chosen)) select.value = chosen;
  showOptions();
}

function chosenModel() {
  return state.models.find((m) => m.name === $("model").value);
}

// ---------------------------------------------------------------- options

function showOptions() {
  const model = chosenModel();
  const box = $("options");
  box.replaceChildren();
  if (!model) return;
  const spec = TASKS[model.task];
  if (!spec) {
    box.append(el("p", { class: "hint", text: `this page cannot draw ${model.task} answers yet` }));
    return;
  }
  for (const o of spec.options) {
    let input;
    if (o.type === "select") {
      input = el("select", { id: `opt-${o.name}` }, ...o.choices.map((c) => el("option", { value: c, text: c })));
    } else {
      input = el("input", { id: `opt-${o.name}`, type: o.type });
      for (const key of ["min", "max", "step"]) if (o[key] !== undefined) input.setAttribute(key, o[key]);
      if (o.value !== undefined) input.value = o.value;
    }
    input.dataset.option = o.name;
    const label = el("label", { "data-mode": o.mode || "" }, `${o.label} `, input);
    box.append(label);
    input.addEventListener("change", () => {
      showModes();
      if (o.local && state.last) draw(state.last);
    });
  }
  showModes();
  $("drop").hidden = Boolean(spec.noImage);
}

function optionValues() {
  const values = {};
  for (const input of $("options").querySelectorAll("[data-option]")) {
    if (input.type === "checkbox") values[input.dataset.option] = input.checked ? "true" : "";
    else values[input.dataset.option] = input.value.trim();
  }
  return values;
}

function showModes() {
  const mode = optionValues().mode;
  for (const label of $("options").querySelectorAll("label[data-mode]")) {
    label.hidden = Boolean(label.dataset.mode) && label.dataset.mode !== mode;
  }
}

// ---------------------------------------------------------------- the request

function setFile(file) {
  state.file = file;
  $("file-name").textContent = file ? `${file.name} (${file.size} bytes)` : "no image yet";
  if (file) run();
}

async function run() {
  const model = chosenModel();
  const spec = model && TASKS[model.task];
  const status = $("status");
  const output = $("output");
  if (!spec) return;
  if (!spec.noImage && !state.file) {
    status.textContent = "Choose an image first.";
    return;
  }
  const values = optionValues();
  const query = new URLSearchParams();
  for (const o of spec.options) {
    if (o.local || (o.mode && o.mode !== values.mode) || values[o.name] === "") continue;
    query.set(o.name, values[o.name]);
  }
  const verb = typeof spec.verb === "function" ? spec.verb(values) : spec.verb;
  const init = { method: "POST", headers: headers({ Accept: "application/json" }) };
  if (!spec.noImage) {
    init.body = state.file;
    init.headers["Content-Type"] = state.file.type || "application/octet-stream";
  }
  output.dataset.state = "running";
  status.className = "status";
  status.textContent = `Asking ${model.name}…`;
  const started = performance.now();
  try {
    const body = await answer(await fetch(`/v1/models/${encodeURIComponent(model.name)}/${verb}?${query}`, init));
    state.last = { model, spec, body, image: spec.noImage ? null : await imageOf(state.file), verb };
    await draw(state.last);
    status.textContent = `${summary(model.task, body)}; answered in ${Math.round(performance.now() - started)} ms.`;
    showTimings(body.timings || {});
    output.dataset.state = "done";
  } catch (err) {
    output.replaceChildren();
    status.textContent = err.message;
    status.className = "status error";
    output.dataset.state = "error";
  }
}

function imageOf(file) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this image (the server read it)"));
    image.src = URL.createObjectURL(file);
  });
}

function pngOf(base64) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the answer's PNG does not decode"));
    image.src = `data:image/png;base64,${base64}`;
  });
}

function summary(task, body) {
  switch (task) {
    case "detection": return `${body.detections.length} object(s) found`;
    case "segmentation": return `${body.areas.filter((a) => Number(a.pixel_count) > 0).length} class(es) in the mask`;
    case "captioning": return `${body.captions.length} caption(s)`;
    case "classification": return `top class ${body.classes[0] ? body.classes[0].class_name : "none"}`;
    default: return `${body.images.length} image(s) drawn`;
  }
}

function showTimings(timings) {
  const rows = $("timings").querySelector("tbody");
  rows.replaceChildren(
    ...TIMINGS.map((key) => el("tr", { "data-timing": key },
      el("th", { text: key.replace("_ms", "") }), el("td", { text: `${(timings[key] || 0).toFixed(1)} ms` }))),
  );
}

async function draw(last) {
  const output = $("output");
  output.replaceChildren();
  await last.spec.render(output, last);
}

// The image on a canvas, ``scale`` times its size (boxes and their labels are drawn at the size
// they are shown, so a small image's text stays readable).
function canvasOf(image, scale = 1) {
  const canvas = el("canvas", { id: "canvas", width: Math.round(image.naturalWidth * scale), height: Math.round(image.naturalHeight * scale) });
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = scale < 1;
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  return canvas;
}

const SHOWN_SIDE = 480; // px: the side a result picture is drawn at (CSS shrinks it on a narrow page)

// ---------------------------------------------------------------- drawing each task's answer

function renderDetections(output, { image, body }) {
  const scale = SHOWN_SIDE / Math.max(image.naturalWidth, image.naturalHeight);
  const canvas = canvasOf(image, scale);
  const ctx = canvas.getContext("2d");
  ctx.lineWidth = 2;
  ctx.font = "12px sans-serif";
  const rows = [];
  for (const d of body.detections) {
    const { x_min: x1, y_min: y1, x_max: x2, y_max: y2 } = d.box;
    const [left, top, right, bottom] = [x1, y1, x2, y2].map((v) => v * scale);
    const c = color(d.label);
    ctx.strokeStyle = c.css;
    ctx.strokeRect(left, top, right - left, bottom - top);
    const text = `${d.class_name} ${d.score.toFixed(2)}`;
    const height = 16;
    const y = top - height >= 0 ? top - height : bottom;
    ctx.fillStyle = c.css;
    ctx.fillRect(left, y, ctx.measureText(text).width + 6, height);
    ctx.fillStyle = "black";
    ctx.fillText(text, left + 3, y + height - 4);
    rows.push(el("tr", { "data-class": d.class_name, "data-score": d.score, "data-box": [x1, y1, x2, y2].join(",") },
      el("td", {}, el("span", { class: "swatch", style: `background:${c.css}` }), d.class_name),
      el("td", { text: d.score.toFixed(3) }),
      el("td", { text: [x1, y1, x2, y2].map((v) => v.toFixed(1)).join(", ") })));
  }
  const table = el("table", { id: "detections" },
    el("thead", {}, el("tr", {}, el("th", { text: "class" }), el("th", { text: "score" }), el("th", { text: "box (x1, y1, x2, y2)" }))),
    el("tbody", {}, ...rows));
  output.append(el("div", { class: "pair" }, canvas, table));
}

async function renderSegmentation(output, { image, body }) {
  const labels = await pngOf(body.label_map_png);
  const alpha = Number(optionValues().alpha || 0.5);
  const canvas = canvasOf(image);
  const ctx = canvas.getContext("2d");
  const map = el("canvas", { width: labels.naturalWidth, height: labels.naturalHeight }).getContext("2d");
  map.drawImage(labels, 0, 0);
  const ids = map.getImageData(0, 0, labels.naturalWidth, labels.naturalHeight).data;
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const label = ids[i];
    if (label === 0) continue; // the background stays as it is
    const c = color(label);
    pixels.data[i] = (1 - alpha) * pixels.data[i] + alpha * c.r;
    pixels.data[i + 1] = (1 - alpha) * pixels.data[i + 1] + alpha * c.g;
    pixels.data[i + 2] = (1 - alpha) * pixels.data[i + 2] + alpha * c.b;
  }
  ctx.putImageData(pixels, 0, 0);
  const rows = body.areas.map((a) => el("tr", { "data-class": a.class_name, "data-fraction": a.area_fraction },
    el("td", {}, el("span", { class: "swatch", style: a.class_id === 0 ? "" : `background:${color(a.class_id).css}` }), a.class_name),
    el("td", { text: `${(100 * a.area_fraction).toFixed(1)} %` }),
    el("td", { text: `${a.pixel_count} px` })));
  const legend = el("table", { id: "legend" },
    el("thead", {}, el("tr", {}, el("th", { text: "class" }), el("th", { text: "area" }), el("th", { text: "pixels" }))),
    el("tbody", {}, ...rows));
  const note = body.processing_detail ? el("p", { class: "hint", text: body.processing_detail }) : "";
  output.append(el("div", { class: "pair" }, canvas, el("div", {}, legend, note)));
}

function renderCaptions(output, { image, body }) {
  const items = body.captions.map((c) => el("li", { "data-score": c.score },
    el("span", { class: "caption", text: c.text }), el("span", { class: "score", text: ` score ${c.score.toFixed(3)}` })));
  output.append(el("div", { class: "pair" }, canvasOf(image), el("ol", { id: "captions" }, ...items)));
}

async function renderClasses(output, { image, body }) {
  const rows = body.classes.map((c) => el("tr", { "data-class": c.class_name, "data-probability": c.probability },
    el("td", { text: c.class_name }),
    el("td", {}, el("span", { class: "bar", style: `width:${Math.round(100 * c.probability)}%` })),
    el("td", { text: `${(100 * c.probability).toFixed(1)} %` })));
  const table = el("table", { id: "classes" },
    el("thead", {}, el("tr", {}, el("th", { text: "class" }), el("th", { text: "" }), el("th", { text: "probability" }))),
    el("tbody", {}, ...rows));
  const pictures = [canvasOf(image)];
  if (body.explanation_png) {
    const overlay = await pngOf(body.explanation_png);
    overlay.id = "explanation";
    overlay.title = "Grad-CAM: where the top class was seen";
    pictures.push(overlay);
  }
  output.append(el("div", { class: "pair" }, ...pictures, table));
}

function renderImages(output, { body, verb }) {
  const id = verb === "interpolate" ? "strip" : "grid";
  const tiles = body.images.map((image, index) => el("img", {
    src: `data:image/png;base64,${image.png}`, "data-index": index, alt: `image ${index}`,
  }));
  output.append(el("div", { id, class: id }, ...tiles));
}

// ---------------------------------------------------------------- wiring

async function start() {
  const token = $("token");
  token.value = localStorage.getItem("cvtasks-token") || "";
  token.addEventListener("change", () => {
    localStorage.setItem("cvtasks-token", token.value.trim());
    loadModels();
  });
  try {
    state.palette = (await answer(await fetch("/ui/config.json"))).palette;
  } catch (err) {
    state.palette = [];
  }
  $("model").addEventListener("change", showOptions);
  $("file").addEventListener("change", (event) => setFile(event.target.files[0] || null));
  $("run").addEventListener("click", run);
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) setFile(event.dataTransfer.files[0]);
  });
  await loadModels();
  document.body.dataset.ready = "true";
}

start();
