// medembed web UI: one script for the four pages (search, similarity, map, jobs), talking to the
// JSON API only. No framework and no build step: the api serves these files as they are.
"use strict";

const page = document.body.dataset.page;
const $ = (sel) => document.querySelector(sel);

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

// The API key, kept for this tab only (sessionStorage: gone when the tab closes).
const KEY = "medembed.key";
const apiKey = () => sessionStorage.getItem(KEY);

function authHeaders() {
  const key = apiKey();
  return key ? { authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const init = { ...options, headers: { "content-type": "application/json", ...authHeaders() } };
  if (options.body !== undefined) init.body = JSON.stringify(options.body);
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error ? body.error.message : `${response.status} ${response.statusText}`;
    if (response.status === 401) askForKey(message);
    throw new Error(message);
  }
  return body;
}

// An image behind the API key: fetched with it, shown from a blob: URL.
async function authImage(src, alt) {
  const img = el("img", { alt });
  const response = await fetch(src, { headers: authHeaders() });
  if (response.ok) img.src = URL.createObjectURL(await response.blob());
  return img;
}

// Without a valid key only the key form shows; a key that was refused says why.
function askForKey(message) {
  const refused = !!apiKey();
  sessionStorage.removeItem(KEY);
  $("#content").hidden = true;
  $("#key-form").hidden = false;
  $("#forget-key").hidden = true;
  $("#who").textContent = "";
  showError(refused ? message : "");
}

// Who the key belongs to; shows the page, and the job form only to keys that may submit.
async function signIn() {
  const who = await api("/api/whoami");
  $("#key-form").hidden = true;
  $("#content").hidden = false;
  $("#who").textContent = `${who.name} (${who.role})`;
  $("#who").dataset.role = who.role;
  $("#forget-key").hidden = !apiKey();
  const form = $("#submit-form");
  if (form) {
    form.hidden = !who.can_submit;
    $("#submit-not-allowed").hidden = who.can_submit;
  }
  return who;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

// The job picker: finished jobs, newest first; the choice is kept across pages.
async function loadJobs() {
  const select = $("#job");
  const { jobs } = await api("/api/jobs");
  const finished = jobs.filter((j) => j.state === "done");
  select.replaceChildren(
    ...finished.map((j) => el("option", { value: j.id, text: `${j.query || "(files)"} — ${j.id.slice(-6)}` })),
  );
  const kept = localStorage.getItem("medembed.job");
  if (kept && finished.some((j) => j.id === kept)) select.value = kept;
  select.onchange = () => {
    localStorage.setItem("medembed.job", select.value);
    if (page === "map") drawMapPage();
  };
  return jobs;
}

const currentJob = () => $("#job").value || undefined;

// ---- Search --------------------------------------------------------------------------------
function searchPage() {
  $("#search-form").onsubmit = async (event) => {
    event.preventDefault();
    showError("");
    const results = $("#results");
    results.replaceChildren();
    try {
      const k = Number($("#k").value) || 10;
      const mode = $("#mode").value;
      const body = await api("/api/search", { method: "POST", body: { query: $("#query").value, k, job: currentJob(), mode } });
      $("#search-meta").textContent = `${body.hits.length} hits in ${body.took_ms.toFixed(1)} ms, ${body.mode} search (job ${body.job})`;
      for (const hit of body.hits) {
        const title = hit.url ? el("a", { href: hit.url, target: "_blank", rel: "noopener", text: hit.title }) : el("span", { text: hit.title });
        // Which rankings found the hit, with their own scores (cosine, BM25).
        const found = hit.found_by.map((by) => by === "dense" && hit.cosine != null ? `dense ${hit.cosine.toFixed(3)}`
          : by === "lexical" && hit.bm25 != null ? `lexical ${hit.bm25.toFixed(1)}` : by).join(" · ");
        results.append(el("li", { class: "result", "data-id": hit.id, "data-found-by": hit.found_by.join(" ") },
          el("span", { class: "score", text: hit.score.toFixed(3) }),
          el("strong", { class: "title" }, title),
          el("span", { class: "found-by", text: found }),
          el("p", { class: "snippet", text: hit.snippet })));
      }
    } catch (e) { showError(e.message); }
  };
}

// ---- Similarity ----------------------------------------------------------------------------
function arc(fraction) {
  const angle = Math.PI * (1 - Math.max(0, Math.min(1, fraction)));
  const x = 100 + 80 * Math.cos(angle), y = 100 - 80 * Math.sin(angle);
  return `M20 100 A80 80 0 0 1 ${x.toFixed(2)} ${y.toFixed(2)}`;
}

function similarityPage() {
  $("#similarity-form").onsubmit = async (event) => {
    event.preventDefault();
    showError("");
    try {
      const body = await api("/api/similarity", { method: "POST", body: { a: $("#text-a").value, b: $("#text-b").value, job: currentJob() } });
      $("#similarity-result").hidden = false;
      $("#gauge-fill").setAttribute("d", arc((body.cosine + 1) / 2));
      $("#cosine-value").textContent = body.cosine.toFixed(3);
      $("#verdict").textContent = body.verdict;
    } catch (e) { showError(e.message); }
  };
}

// ---- Map -----------------------------------------------------------------------------------
const palette = ["#2e6fdb", "#e4572e", "#17bebb", "#ffc914", "#76b041", "#9c51b6", "#f28ab2", "#5b5f97", "#c97b2e", "#1b998b", "#e84855", "#3d5a80"];
const map = { points: [], clusters: [], view: { x: 0, y: 0, scale: 1 }, colors: new Map() };

// Clusters keep their legend colour; descriptors get colours in order of first appearance.
function colorOf(point) {
  if ($("#color-by").value === "cluster") return palette[point.cluster % palette.length];
  const key = point.descriptor || "—";
  if (!map.colors.has(key)) map.colors.set(key, palette[map.colors.size % palette.length]);
  return map.colors.get(key);
}

function toScreen(p, canvas) {
  const { x, y, scale } = map.view;
  return [canvas.width / 2 + (p.x - x) * scale * canvas.width * 0.45, canvas.height / 2 - (p.y - y) * scale * canvas.height * 0.45];
}

function render() {
  const canvas = $("#map");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  map.colors.clear();
  for (const p of map.points) {
    const [sx, sy] = toScreen(p, canvas);
    ctx.fillStyle = colorOf(p);
    ctx.beginPath();
    ctx.arc(sx, sy, 4, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.fillStyle = "#14213d";
  ctx.font = "12px system-ui";
  for (const c of map.clusters) {
    const [sx, sy] = toScreen(c, canvas);
    ctx.fillText(c.labels.slice(0, 2).join(", "), sx + 6, sy - 6);
  }
  canvas.dataset.points = String(map.points.length);
  const legend = $("#legend");
  legend.replaceChildren(...map.clusters.map((c) => el("li", {},
    el("span", { class: "swatch", style: `background:${palette[c.cluster % palette.length]}` }),
    `${c.cluster}: ${c.labels.join(", ") || "(no label)"} (${c.size})`)));
}

function nearest(event) {
  const canvas = $("#map");
  const rect = canvas.getBoundingClientRect();
  const mx = (event.clientX - rect.left) * (canvas.width / rect.width);
  const my = (event.clientY - rect.top) * (canvas.height / rect.height);
  let best = null, bestDistance = 64;
  for (const p of map.points) {
    const [sx, sy] = toScreen(p, canvas);
    const d = (sx - mx) ** 2 + (sy - my) ** 2;
    if (d < bestDistance) { best = p; bestDistance = d; }
  }
  return best;
}

async function drawMapPage() {
  showError("");
  try {
    const body = await api(`/api/map${currentJob() ? `?job=${currentJob()}` : ""}`);
    map.points = body.points;
    map.clusters = body.clusters;
    map.view = { x: 0, y: 0, scale: 1 };
    $("#map-meta").textContent = `${body.points.length} articles, ${body.clusters.length} clusters`;
    render();
  } catch (e) { showError(e.message); }
}

function mapPage() {
  const canvas = $("#map");
  const tooltip = $("#tooltip");
  $("#color-by").onchange = render;
  $("#reset-zoom").onclick = () => { map.view = { x: 0, y: 0, scale: 1 }; render(); };
  canvas.onwheel = (event) => {
    event.preventDefault();
    map.view.scale = Math.max(0.5, Math.min(50, map.view.scale * (event.deltaY < 0 ? 1.2 : 1 / 1.2)));
    render();
  };
  let drag = null;
  canvas.onmousedown = (e) => { drag = { x: e.clientX, y: e.clientY, view: { ...map.view } }; };
  window.onmouseup = () => { drag = null; };
  canvas.onmousemove = (event) => {
    if (drag) {
      const k = map.view.scale * canvas.getBoundingClientRect().width * 0.45;
      map.view.x = drag.view.x - (event.clientX - drag.x) / k;
      map.view.y = drag.view.y + (event.clientY - drag.y) / k;
      render();
      return;
    }
    const p = nearest(event);
    tooltip.hidden = !p;
    if (p) {
      tooltip.textContent = `${p.title}${p.descriptor ? ` — ${p.descriptor}` : ""}`;
      tooltip.style.left = `${event.offsetX + 12}px`;
      tooltip.style.top = `${event.offsetY + 12}px`;
    }
  };
  canvas.onclick = async (event) => {
    const p = nearest(event);
    if (!p) return;
    $("#neighbours-of").textContent = `Nearest to: ${p.title}`;
    try {
      const params = new URLSearchParams({ id: p.id, k: "8" });
      if (currentJob()) params.set("job", currentJob());
      const body = await api(`/api/neighbours?${params}`);
      $("#neighbours").replaceChildren(...body.hits.map((h) => el("li", { text: `${h.title} (${h.score.toFixed(3)})` })));
    } catch (e) { showError(e.message); }
  };
  drawMapPage();
}

// ---- Jobs ----------------------------------------------------------------------------------
function stageBars(job) {
  const cell = el("td");
  for (const s of job.stages) {
    const fraction = s.state === "done" ? 1 : s.total > 0 ? s.done / s.total : 0;
    const bar = el("span", { class: `bar ${s.state}`, title: `${s.stage}: ${s.state} ${s.done}/${s.total} ${s.unit}` },
      el("span", { style: `width:${(fraction * 100).toFixed(0)}%` }));
    cell.append(bar);
  }
  return cell;
}

function metricsTable(training) {
  const rows = ["ndcg_at_10", "mrr_at_10", "recall_at_10", "map_at_100", "spearman", "roc_auc"];
  const table = el("table", { class: "metrics" },
    el("thead", {}, el("tr", {}, el("th", { text: "metric (val)" }), el("th", { text: "base" }), el("th", { text: "fine-tuned" }))));
  const body = el("tbody");
  for (const r of rows) {
    const base = training.baseline.val[r], tuned = training.fine_tuned.val[r];
    body.append(el("tr", {}, el("td", { text: r }), el("td", { text: base.toFixed(4) }), el("td", { text: tuned.toFixed(4) })));
  }
  table.append(body);
  return table;
}

async function showJob(id) {
  const detail = $("#job-detail");
  try {
    const job = await api(`/api/jobs/${id}`);
    detail.replaceChildren(el("h2", { text: `Job ${job.id}` }), el("p", { class: "meta", text: `${job.query} — ${job.state}` }));
    for (const s of job.stage_status) {
      const line = `${s.stage}: ${s.state} ${s.done}/${s.total} ${s.unit}` + (s.last_error ? ` — last error: ${s.last_error}` : "");
      detail.append(el("div", { class: "meta", text: line }));
    }
    if (job.training && job.training.baseline && job.training.fine_tuned) {
      detail.append(el("h3", { text: `Training (${job.training.base_model})` }), metricsTable(job.training));
    }
    for (const file of job.files) detail.append(await authImage(file, file));
    detail.hidden = false;
  } catch (e) { showError(e.message); }
}

async function refreshJobs() {
  const { jobs } = await api("/api/jobs");
  const body = $("#jobs tbody");
  body.replaceChildren(...jobs.map((j) => {
    const row = el("tr", { "data-id": j.id },
      el("td", { text: j.id }), el("td", { text: j.query }), el("td", { text: j.created_at }),
      el("td", { class: "state", text: j.state }), stageBars(j));
    row.onclick = () => showJob(j.id);
    return row;
  }));
  return jobs;
}

function jobsPage() {
  $("#submit-form").onsubmit = async (event) => {
    event.preventDefault();
    showError("");
    const request = { query: $("#new-query").value, max_articles: Number($("#new-max").value) || 1000, source: $("#new-source").value || "eutils" };
    if ($("#new-from").value) request.from = $("#new-from").value;
    if ($("#new-to").value) request.to = $("#new-to").value;
    try {
      const body = await api("/api/jobs", { method: "POST", body: request });
      $("#submit-result").textContent = `queued job ${body.id}`;
      await refreshJobs();
    } catch (e) { showError(e.message); }
  };
  refreshJobs().catch((e) => showError(e.message));
  setInterval(() => refreshJobs().catch(() => {}), 5000);
}

// ---- Start ---------------------------------------------------------------------------------
for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === page);

function startPage() {
  return loadJobs()
    .catch((e) => showError(e.message))
    .finally(() => {
      ({ search: searchPage, similarity: similarityPage, map: mapPage, jobs: jobsPage })[page]();
    });
}

$("#key-form").onsubmit = async (event) => {
  event.preventDefault();
  showError("");
  sessionStorage.setItem(KEY, $("#key").value.trim());
  $("#key").value = "";
  try {
    await signIn();
    await startPage();
  } catch (e) { showError(e.message); }
};
$("#forget-key").onclick = () => askForKey("");

signIn().then(startPage, () => {});
