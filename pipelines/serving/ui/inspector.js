// The recommendation inspector: plain JavaScript over the server's public read endpoints.
// Everything shown is set with textContent (titles are user data), and nothing is fetched
// from anywhere but this server (the page's Content-Security-Policy allows nothing else).
"use strict";

const CELL_W = 26;
const CELL_H = 20;
const MAX_DESCRIBED = 500; // ids per GET /videos (pipelines/serving/inspector.py)
const videos = new Map(); // video id -> {title, categories, known, servable}

const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let payload;
  try {
    payload = JSON.parse(text);
  } catch (_) {
    payload = { error: text };
  }
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${response.status} ${payload.error || text}`);
  }
  return payload;
}

async function describe(ids) {
  const missing = [...new Set(ids)].filter((id) => !videos.has(id));
  for (let start = 0; start < missing.length; start += MAX_DESCRIBED) {
    const chunk = missing.slice(start, start + MAX_DESCRIBED);
    const query = chunk.map((id) => `id=${encodeURIComponent(id)}`).join("&");
    const answer = await api("GET", `/videos?${query}`);
    for (const video of answer.videos) videos.set(video.video_id, video);
  }
}

function title(id) {
  const video = videos.get(id);
  return video && video.title ? video.title : `video ${id}`;
}

function categories(id) {
  const video = videos.get(id);
  return video ? video.categories.join(", ") : "";
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function videoRow(row, id, figure) {
  // A video of the history or of the side list: id, title, categories, one figure, "similar".
  row.dataset.videoId = String(id);
  cell(row, String(id));
  cell(row, title(id), "title");
  cell(row, categories(id));
  cell(row, figure, "num");
  similarButton(row, id);
}

function similarButton(row, id) {
  const td = document.createElement("td");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link similar";
  button.textContent = "similar";
  button.dataset.videoId = String(id);
  button.addEventListener("click", () => run(() => showSimilar(id)));
  td.appendChild(button);
  row.appendChild(td);
}

function fillBody(table, rows, fill) {
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const [index, item] of rows.entries()) {
    const tr = document.createElement("tr");
    fill(tr, item, index);
    body.appendChild(tr);
  }
}

function parseIds(text) {
  const parts = text.split(/[\s,;]+/).filter((part) => part.length > 0);
  for (const part of parts) {
    if (!/^\d+$/.test(part)) throw new Error(`not a video id: ${part} (send whole numbers)`);
  }
  return parts.map(Number);
}

async function recommend() {
  const userText = $("user-id").value.trim();
  const historyText = $("history-ids").value.trim();
  const k = Number($("k").value) || 10;
  const request = { k, explain: true };
  let watches;
  if (userText) {
    if (!/^\d+$/.test(userText)) throw new Error("the user id is a whole number");
    request.user_id = Number(userText);
  } else if (historyText) {
    request.history = parseIds(historyText);
  } else {
    throw new Error("enter a user id or a history of video ids");
  }
  const result = await api("POST", "/recommend", request);
  if (request.user_id !== undefined) {
    const history = await api("GET", `/users/${request.user_id}/history?limit=50`);
    watches = history.watches;
    $("history-count").textContent = `(latest ${watches.length} of ${history.total})`;
  } else {
    watches = request.history.map((id) => ({ video_id: id, engagement: null }));
    $("history-count").textContent = `(${watches.length} from the request)`;
  }
  const attention = result.attention;
  await describe([
    ...watches.map((w) => w.video_id),
    ...result.items.map((item) => item.video_id),
    ...result.items.flatMap((item) => item.because),
    ...(attention ? attention.history : []),
  ]);
  renderSummary(result);
  fillBody($("recs"), result.items, (tr, item, index) => {
    tr.dataset.videoId = String(item.video_id);
    cell(tr, String(index + 1), "num");
    cell(tr, String(item.video_id));
    cell(tr, title(item.video_id), "title");
    cell(tr, categories(item.video_id));
    cell(tr, item.score.toFixed(4), "num score");
    cell(tr, item.source || result.source, "source");
    cell(tr, item.because.length ? title(item.because[0]) : "", "because");
    similarButton(tr, item.video_id);
  });
  fillBody($("history"), watches.slice().reverse(), (tr, watch) => {
    videoRow(tr, watch.video_id, watch.engagement === null ? "?" : watch.engagement.toFixed(2));
  });
  drawHeatmap(result.items, attention);
}

function renderSummary(result) {
  $("summary").hidden = false;
  $("rec-source").textContent = result.source;
  $("history-source").textContent = `history: ${result.history_source}; bundle ${result.bundle_id}`;
  const head = $("timings").querySelector("thead tr");
  const body = $("timings").querySelector("tbody tr");
  head.replaceChildren();
  body.replaceChildren();
  for (const [stage, ms] of Object.entries(result.timings_ms)) {
    const th = document.createElement("th");
    th.textContent = stage;
    head.appendChild(th);
    cell(body, `${ms.toFixed(2)} ms`, "num");
  }
}

function heatColour(t) {
  // White to dark blue: light cells are weights near zero.
  const from = [247, 251, 255];
  const to = [8, 48, 107];
  const mix = from.map((c, i) => Math.round(c + (to[i] - c) * t));
  return `rgb(${mix[0]}, ${mix[1]}, ${mix[2]})`;
}

function drawHeatmap(items, attention) {
  const section = $("attention");
  const canvas = $("heatmap");
  if (!attention || attention.history.length === 0) {
    section.hidden = true;
    return;
  }
  section.hidden = false;
  const rows = attention.weights.length;
  const cols = attention.history.length;
  canvas.width = cols * CELL_W;
  canvas.height = rows * CELL_H;
  canvas.dataset.rows = String(rows);
  canvas.dataset.cols = String(cols);
  // Scaled from the smallest weight to the largest: a softmax over a few watches is close to
  // uniform, and the differences are what the page is for.
  const flat = attention.weights.flat();
  const low = Math.min(...flat);
  const span = Math.max(Math.max(...flat) - low, 1e-9);
  canvas.dataset.low = String(low);
  canvas.dataset.span = String(span);
  const context = canvas.getContext("2d");
  for (let r = 0; r < rows; r += 1) {
    for (let c = 0; c < cols; c += 1) {
      context.fillStyle = heatColour((attention.weights[r][c] - low) / span);
      context.fillRect(c * CELL_W, r * CELL_H, CELL_W - 1, CELL_H - 1);
    }
  }
  const legend = $("heat-cols");
  legend.replaceChildren();
  for (const watched of attention.history) {
    const item = document.createElement("li");
    item.textContent = title(watched);
    item.dataset.videoId = String(watched);
    legend.appendChild(item);
  }
  const tip = $("heat-tip");
  canvas.onmousemove = (event) => {
    const box = canvas.getBoundingClientRect();
    const c = Math.floor((event.clientX - box.left) / CELL_W);
    const r = Math.floor((event.clientY - box.top) / CELL_H);
    if (r < 0 || r >= rows || c < 0 || c >= cols) {
      tip.hidden = true;
      return;
    }
    const watched = attention.history[c];
    tip.textContent =
      `#${r + 1} ${title(items[r].video_id)} ← ${title(watched)}: ` +
      `weight ${attention.weights[r][c].toFixed(4)}`;
    tip.dataset.row = String(r);
    tip.dataset.col = String(c);
    tip.style.left = `${c * CELL_W + CELL_W + 8}px`;
    tip.style.top = `${r * CELL_H}px`;
    tip.hidden = false;
  };
  canvas.onmouseleave = () => {
    tip.hidden = true;
  };
}

async function showSimilar(id) {
  const answer = await api("GET", `/similar?video_id=${id}&k=10`);
  await describe([id, ...answer.items.map((item) => item.video_id)]);
  showSide(`Similar to ${title(id)} (${id})`, answer.items);
}

async function search() {
  const query = $("search-q").value.trim();
  if (!query) throw new Error("enter words of a title to search for");
  const answer = await api("GET", `/videos/search?q=${encodeURIComponent(query)}&k=20`);
  for (const video of answer.videos) videos.set(video.video_id, video);
  showSide(`Titles with "${query}"`, answer.videos.map((v) => ({ video_id: v.video_id })));
}

function showSide(heading, items) {
  $("side").hidden = false;
  $("side-title").textContent = heading;
  fillBody($("side-list"), items, (tr, item) => {
    videoRow(tr, item.video_id, item.score === undefined ? "" : item.score.toFixed(4));
  });
}

// -- bundle page ------------------------------------------------------------------------

function flatten(value, prefix, out) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value)) {
      flatten(inner, prefix ? `${prefix}.${key}` : key, out);
    }
  } else if (typeof value === "number" || typeof value === "string" || typeof value === "boolean") {
    out.push([prefix, value]);
  }
  return out;
}

function formatValue(value) {
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(4);
  return String(value);
}

function keyValueRows(table, pairs) {
  fillBody(table, pairs, (tr, [key, value]) => {
    cell(tr, key);
    cell(tr, formatValue(value), typeof value === "number" ? "num" : "");
  });
}

function gateTable(table, gate) {
  // The stage gate's validation figures: every {order: value} entry is a column, every order
  // a row (retrieval alone, each item-to-item source alone, the two-stage ranker).
  const head = table.querySelector("thead");
  head.replaceChildren();
  const columns = Object.keys(gate || {}).filter(
    (key) => gate[key] !== null && typeof gate[key] === "object" && !Array.isArray(gate[key]),
  );
  const orders = [...new Set(columns.flatMap((key) => Object.keys(gate[key])))];
  const tr = document.createElement("tr");
  for (const name of ["order", ...columns]) {
    const th = document.createElement("th");
    th.textContent = name;
    tr.appendChild(th);
  }
  head.appendChild(tr);
  fillBody(table, orders, (row, order) => {
    row.dataset.order = order;
    cell(row, order === gate.order ? `${order} (served)` : order);
    for (const key of columns) {
      const value = gate[key][order];
      cell(row, value === undefined ? "" : formatValue(value), "num");
    }
  });
  const note = $("bundle-gate-reason");
  note.textContent = gate ? `${gate.reason || ""} (${gate.cases ?? "?"} validation users)` : "";
}

function evaluationTable(table, evaluation) {
  // `vidrec evaluate`'s table: one row per scorer (the bundle's stages, each source alone,
  // the baselines), one column per metric, in the report's own order.
  const head = table.querySelector("thead");
  head.replaceChildren();
  const note = $("bundle-evaluation-note");
  if (!evaluation) {
    fillBody(table, [], () => {});
    note.textContent =
      "No evaluation of this bundle yet: `vidrec evaluate --data DIR --artifacts ROOT` writes one.";
    return;
  }
  const tr = document.createElement("tr");
  for (const name of ["scorer", ...evaluation.columns]) {
    const th = document.createElement("th");
    th.textContent = name;
    tr.appendChild(th);
  }
  head.appendChild(tr);
  fillBody(table, Object.entries(evaluation.rows), (row, [scorer, metrics]) => {
    row.dataset.scorer = scorer;
    cell(row, scorer);
    for (const name of evaluation.columns) {
      const value = metrics[name];
      cell(row, value === undefined ? "" : formatValue(value), "num");
    }
  });
  note.textContent = `${evaluation.num_cases} users; ${evaluation.protocol}`;
}

async function loadBundle() {
  const bundle = await api("GET", "/bundle");
  $("bundle-id").textContent = bundle.bundle_id;
  const since = bundle.serving_since;
  keyValueRows($("bundle-facts"), [
    ["created", bundle.created_at],
    ["serving since", since ? `${since.time} (${since.action})` : "not in the publish log"],
    ["parent", bundle.parent || "none"],
    ...flatten(bundle.data, "data", []),
    ...flatten(bundle.counts, "counts", []),
  ]);
  evaluationTable($("bundle-evaluation"), bundle.evaluation);
  const { stage_gate: gate, ...rest } = bundle.metrics;
  gateTable($("bundle-gate"), gate);
  keyValueRows($("bundle-metrics"), flatten(rest, "", []));
  const training = $("bundle-training");
  training.replaceChildren();
  for (const [stage, history] of Object.entries(bundle.training)) {
    const heading = document.createElement("h3");
    heading.textContent = `${stage}: best epoch ${history.best_epoch}, ${history.stop_reason || ""}`;
    training.appendChild(heading);
    const table = document.createElement("table");
    table.className = "grid training";
    table.dataset.stage = stage;
    const names = [...new Set(history.epochs.flatMap((e) => Object.keys(e.validation)))];
    const head = document.createElement("thead");
    const tr = document.createElement("tr");
    for (const name of ["epoch", "loss", ...names, "seconds"]) {
      const th = document.createElement("th");
      th.textContent = name;
      tr.appendChild(th);
    }
    head.appendChild(tr);
    table.appendChild(head);
    table.appendChild(document.createElement("tbody"));
    fillBody(table, history.epochs, (row, epoch) => {
      cell(row, String(epoch.epoch), "num");
      cell(row, epoch.loss.toFixed(4), "num");
      for (const name of names) cell(row, formatValue(epoch.validation[name] ?? ""), "num");
      cell(row, epoch.seconds.toFixed(1), "num");
    });
    training.appendChild(table);
  }
  const curves = $("bundle-curves");
  curves.replaceChildren();
  for (const name of bundle.reports.filter((n) => n.endsWith(".png"))) {
    const image = document.createElement("img");
    image.src = `/bundle/reports/${encodeURIComponent(name)}`;
    image.alt = name;
    curves.appendChild(image);
  }
  fillBody($("bundle-published"), bundle.published, (tr, event) => {
    cell(tr, event.time);
    cell(tr, event.action);
    cell(tr, event.bundle_id);
    cell(tr, event.previous || "");
    cell(tr, event.reason);
  });
}

// -- wiring -----------------------------------------------------------------------------

async function run(work) {
  showError("");
  document.body.dataset.busy = "1";
  try {
    await work();
  } catch (error) {
    showError(error.message);
  } finally {
    delete document.body.dataset.busy;
  }
}

function showView(name) {
  $("view-user").hidden = name !== "user";
  $("view-bundle").hidden = name !== "bundle";
  $("tab-user").classList.toggle("active", name === "user");
  $("tab-bundle").classList.toggle("active", name === "bundle");
  if (name === "bundle") run(loadBundle);
}

document.addEventListener("DOMContentLoaded", () => {
  $("recommend-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run(recommend);
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run(search);
  });
  $("tab-user").addEventListener("click", () => showView("user"));
  $("tab-bundle").addEventListener("click", () => showView("bundle"));
  api("GET", "/readyz")
    .then((ready) => {
      $("serving-bundle").textContent = `serving ${ready.bundle_id}`;
    })
    .catch(() => {
      $("serving-bundle").textContent = "no bundle loaded yet";
    });
  if (window.location.hash === "#bundle") showView("bundle");
});
