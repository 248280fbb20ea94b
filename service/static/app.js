// CoordConv demo: plain JS, no build step, no external network.
"use strict";
const N = 64, SCALE = 6, HALF = 4;
const $ = (id) => document.getElementById(id);
const demo = { lastRender: null, lastLocate: null, busy: 0 };
window.demo = demo;  // state for tests and the curious

const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("coordconv-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("coordconv-key", keyInput.value);
  loadModels();
});

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (keyInput.value) headers["Authorization"] = "Bearer " + keyInput.value;
  demo.busy++;
  try {
    const r = await fetch(path, Object.assign({}, options, { headers }));
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(`${r.status}: ${body.detail || body.error || r.statusText}`);
    return body;
  } finally { demo.busy--; }
}

function square(x, y) {
  const img = Array.from({ length: N }, () => new Float32Array(N));
  for (let r = Math.max(0, y - HALF); r <= Math.min(N - 1, y + HALF); r++)
    for (let c = Math.max(0, x - HALF); c <= Math.min(N - 1, x + HALF); c++) img[r][c] = 1;
  return img;
}

function paint(canvas, img, scaleToMax = false) {
  const ctx = canvas.getContext("2d");
  const s = canvas.width / N;
  let peak = 1;
  if (scaleToMax) peak = Math.max(...img.map((row) => Math.max(...row))) || 1;
  const data = ctx.createImageData(N, N);
  for (let r = 0; r < N; r++) for (let c = 0; c < N; c++) {
    const v = Math.round(255 * Math.min(1, Math.max(0, img[r][c] / peak)));
    const i = 4 * (r * N + c);
    data.data[i] = data.data[i + 1] = data.data[i + 2] = v; data.data[i + 3] = 255;
  }
  const tmp = document.createElement("canvas");
  tmp.width = tmp.height = N;
  tmp.getContext("2d").putImageData(data, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tmp, 0, 0, N * s, N * s);
}

function outline(canvas, x, y, color) {
  const ctx = canvas.getContext("2d"), s = canvas.width / N;
  ctx.strokeStyle = color; ctx.lineWidth = 2;
  ctx.strokeRect((x - HALF) * s, (y - HALF) * s, 9 * s, 9 * s);
}

function cross(canvas, x, y, color) {
  const ctx = canvas.getContext("2d"), s = canvas.width / N;
  const cx = (x + 0.5) * s, cy = (y + 0.5) * s;
  ctx.strokeStyle = color; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.moveTo(cx - 10, cy); ctx.lineTo(cx + 10, cy);
  ctx.moveTo(cx, cy - 10); ctx.lineTo(cx, cy + 10); ctx.stroke();
}

function iou(pred, truth) {
  let inter = 0, union = 0;
  for (let r = 0; r < N; r++) for (let c = 0; c < N; c++) {
    const p = pred[r][c] > 0.5, t = truth[r][c] > 0.5;
    if (p && t) inter++; if (p || t) union++;
  }
  return union ? inter / union : 1;
}

function pointFrom(canvas, event) {
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) / rect.width * N);
  const y = Math.floor((event.clientY - rect.top) / rect.height * N);
  return [Math.min(N - 1, Math.max(0, x)), Math.min(N - 1, Math.max(0, y))];
}

function show(id, text, error = false) {
  const el = $(id); el.textContent = text; el.classList.toggle("error", error);
}

async function render(x, y) {
  show("render-result", `Rendering (${x}, ${y})...`);
  try {
    const [sq, heat] = await Promise.all([
      api("/v1/render", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ coords: [[x, y]], model: "render", format: "array" }) }),
      api("/v1/render", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ coords: [[x, y]], model: "pixel", format: "array" }) })
        .catch(() => null),
    ]);
    const img = sq.images[0];
    paint($("render-canvas"), img);
    outline($("render-canvas"), x, y, "#ef4444");
    if (heat) paint($("heatmap-canvas"), heat.images[0], true);
    const score = iou(img, square(x, y));
    demo.lastRender = { x, y, image: img, iou: score };
    show("render-result", `(${x}, ${y}): IoU with the true square ${score.toFixed(3)} ` +
      `(model ${sq.model} v${sq.version})`);
  } catch (e) { show("render-result", `Render failed: ${e.message}`, true); }
}

// The held-out quadrant of the paper's quadrant split: test iff x > 32 and y > 32.
const HELD_OUT = 33;
const heldOut = (x, y) => x >= HELD_OUT && y >= HELD_OUT;

function shadeQuadrant(canvas) {
  const ctx = canvas.getContext("2d"), s = canvas.width / N;
  ctx.fillStyle = "rgba(245, 158, 11, 0.22)";
  ctx.fillRect(HELD_OUT * s, HELD_OUT * s, (N - HELD_OUT) * s, (N - HELD_OUT) * s);
  ctx.strokeStyle = "#f59e0b"; ctx.lineWidth = 2; ctx.setLineDash([6, 4]);
  ctx.strokeRect(HELD_OUT * s, HELD_OUT * s, (N - HELD_OUT) * s, (N - HELD_OUT) * s);
  ctx.setLineDash([]);
}

const renderOne = (model, x, y) => api("/v1/render", { method: "POST",
  headers: { "Content-Type": "application/json" },
  body: JSON.stringify({ coords: [[x, y]], model, version: "1", format: "array" }) });

// The same point through the baseline and CoordConv, both trained without the shaded quadrant.
async function versus(x, y) {
  const where = heldOut(x, y) ? "inside the held-out quadrant" : "in the training region";
  show("versus-result", `Rendering (${x}, ${y}) with both models...`);
  const truth = square(x, y), scores = {};
  const results = await Promise.allSettled([renderOne("render-baseline", x, y),
                                            renderOne("render", x, y)]);
  const errors = [];
  [["baseline", results[0]], ["coordconv", results[1]]].forEach(([side, r]) => {
    const canvas = $(`versus-${side}`);
    if (r.status === "fulfilled") {
      const img = r.value.images[0];
      scores[side] = iou(img, truth);
      paint(canvas, img);
      $(`versus-${side}-score`).textContent = `IoU ${scores[side].toFixed(3)}`;
    } else {
      paint(canvas, square(-100, -100));
      $(`versus-${side}-score`).textContent = "";
      errors.push(`${side}: ${r.reason.message}`);
    }
    shadeQuadrant(canvas);
    outline(canvas, x, y, "#ef4444");
  });
  demo.lastVersus = { x, y, heldOut: heldOut(x, y), ...scores };
  const fmt = (v) => (v === undefined ? "failed" : v.toFixed(3));
  show("versus-result", `(${x}, ${y}), ${where}: IoU with the true square, baseline ` +
    `${fmt(scores.baseline)}, CoordConv ${fmt(scores.coordconv)}` +
    (errors.length ? ` (${errors.join("; ")})` : ""), errors.length > 0);
}

async function locateImage(img, truth) {
  show("locate-result", "Locating...");
  try {
    const out = await api("/v1/locate", { method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ images: [img.map((row) => Array.from(row))], model: "locate" }) });
    showLocated(img, out.coords[0], truth, trust(out));
  } catch (e) { show("locate-result", `Locate failed: ${e.message}`, true); }
}

// The confidence of the first image, when the model answers one (locate version 2).
function trust(out) {
  return out.confidence ? { confidence: out.confidence[0], ok: out.ok[0], version: out.version }
    : { version: out.version };
}

function showLocated(img, [px, py], truth, t = {}) {
  const canvas = $("locate-canvas");
  if (img) paint(canvas, img);
  const doubtful = t.ok === false;
  cross(canvas, px, py, doubtful ? "#ef4444" : "#22c55e");
  demo.lastLocate = { x: px, y: py, truth, ...t };
  let text = `Located (${px.toFixed(2)}, ${py.toFixed(2)})`;
  if (t.confidence !== undefined) {
    text += doubtful
      ? ` - doubtful: confidence ${t.confidence.toFixed(2)}, the image does not look like one ` +
        "9x9 square or one lit pixel"
      : `, confidence ${t.confidence.toFixed(2)}`;
  }
  if (truth) text += `; stamped at (${truth[0]}, ${truth[1]}), error ` +
    `${Math.hypot(px - truth[0], py - truth[1]).toFixed(2)} px`;
  if (t.version) text += ` (model v${t.version})`;
  show("locate-result", text, doubtful);
}

async function locatePng(file) {
  show("locate-result", `Locating ${file.name}...`);
  const form = new FormData();
  form.append("images", file, file.name);
  try {
    const out = await api("/v1/locate?model=locate", { method: "POST", body: form });
    const bitmap = await createImageBitmap(file);
    const ctx = $("locate-canvas").getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(bitmap, 0, 0, N * SCALE, N * SCALE);
    showLocated(null, out.coords[0], null, trust(out));
  } catch (e) { show("locate-result", `Locate failed: ${e.message}`, true); }
}

function keyboard(canvas, onPick) {
  let cur = [32, 32];
  canvas.addEventListener("keydown", (e) => {
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (moves[e.key]) {
      const step = e.shiftKey ? 8 : 1;
      cur = [Math.min(N - 1, Math.max(0, cur[0] + moves[e.key][0] * step)),
             Math.min(N - 1, Math.max(0, cur[1] + moves[e.key][1] * step))];
      canvas.setAttribute("aria-label", `cursor at (${cur[0]}, ${cur[1]}); Enter to choose`);
      e.preventDefault();
    } else if (e.key === "Enter" || e.key === " ") {
      onPick(cur[0], cur[1]); e.preventDefault();
    }
  });
}

const renderCanvas = $("render-canvas"), locateCanvas = $("locate-canvas");
renderCanvas.addEventListener("click", (e) => render(...pointFrom(renderCanvas, e)));
keyboard(renderCanvas, render);
const stamp = (x, y) => {
  const cx = Math.min(59, Math.max(4, x)), cy = Math.min(59, Math.max(4, y));
  locateImage(square(cx, cy), [cx, cy]);
};
locateCanvas.addEventListener("click", (e) => stamp(...pointFrom(locateCanvas, e)));
keyboard(locateCanvas, stamp);
locateCanvas.addEventListener("dragover", (e) => e.preventDefault());
locateCanvas.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files[0]) locatePng(e.dataTransfer.files[0]);
});
$("png-input").addEventListener("change", (e) => e.target.files[0] && locatePng(e.target.files[0]));

async function loadModels() {
  const body = $("models-table").querySelector("tbody");
  try {
    const { models } = await api("/v1/models");
    body.replaceChildren(...models.map((m) => {
      const tr = document.createElement("tr");
      const metrics = Object.entries(m.metrics)
        .filter(([k]) => !k.startsWith("max_"))
        .map(([k, v]) => `${k.replace(/_/g, " ")} ${(+v).toFixed(k === "accuracy" || k === "iou" ? 4 : 3)}`)
        .join(", ");
      for (const text of [`${m.name} v${m.version}`, m.task, m.arch, m.provider, metrics]) {
        const td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
      }
      return tr;
    }));
  } catch (e) {
    body.innerHTML = "";
    const tr = body.insertRow(), td = tr.insertCell();
    td.colSpan = 5; td.textContent = `Could not list models: ${e.message}`;
  }
}

for (const side of ["baseline", "coordconv"]) {
  const canvas = $(`versus-${side}`);
  canvas.addEventListener("click", (e) => versus(...pointFrom(canvas, e)));
  keyboard(canvas, versus);
  paint(canvas, square(-100, -100)); shadeQuadrant(canvas);
}
paint(renderCanvas, square(-100, -100)); paint(locateCanvas, square(-100, -100));
paint($("heatmap-canvas"), square(-100, -100));
loadModels();
// Enter in the API key field must not submit the form (which would reload the page).
$("key-form").addEventListener("submit", (e) => e.preventDefault());
