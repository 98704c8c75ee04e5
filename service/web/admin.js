"use strict";
// The admin page: upload crops, browse (view, delete) them, start a reindex and follow its
// job, show stats.
const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("tbps-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("tbps-key", keyInput.value);
  loadStats();
  loadCrops(false);
  loadCameraNames();
});
const headers = () => ({"X-API-Key": keyInput.value});

async function call(path, options = {}) {
  const resp = await fetch(path, {...options, headers: {...headers(), ...(options.headers || {})}});
  const data = await resp.json();
  if (!resp.ok && Array.isArray(data.detail)) throw new Error(data.message || data.detail[0].msg);
  if (!resp.ok) throw new Error(data.message || data.detail || `error ${resp.status}`);
  return data;
}

function statItems(stats) {
  const crops = Object.values(stats.crops).reduce((a, b) => a + b, 0);
  const byStatus = (counts) => Object.entries(counts).map(([k, v]) => `${v.toLocaleString()} ${k}`)
    .join(", ") || "none";
  return [
    ["crops", crops.toLocaleString(), byStatus(stats.crops)],
    ["cameras", stats.cameras.toLocaleString()],
    ["persons", stats.persons.toLocaleString(), "distinct person/track ids"],
    ["live index", stats.index.version || "none yet",
     stats.index.version ? `${stats.index.count.toLocaleString()} vectors · ${stats.index.dim}-d · ` +
       `${stats.index.factory}` : "run a reindex"],
    ["jobs", byStatus(stats.jobs)],
    ["audited searches", stats.searches.toLocaleString(), "see TBPS_AUDIT_SEARCHES"],
  ];
}

async function loadStats() {
  const box = $("stats");
  try {
    const items = statItems(await call("/admin/stats"));
    box.replaceChildren(...items.map(([term, value, note]) => {
      const div = document.createElement("div");
      div.dataset.stat = term;
      const dt = document.createElement("dt"); dt.textContent = term;
      const dd = document.createElement("dd"); dd.textContent = value;
      div.append(dt, dd);
      if (note) {
        const small = document.createElement("dd"); small.className = "muted"; small.textContent = note;
        div.append(small);
      }
      return div;
    }));
  } catch (err) { box.textContent = err.message; }
}

function followJob(job) {
  const show = (j) => {
    $("job-progress").value = j.progress;
    $("job-status").textContent = `job ${j.id} (${j.kind}): ${j.status}` +
      (j.message ? ` – ${j.message}` : "");
    $("job-status").dataset.status = j.status;
  };
  show(job);
  const timer = setInterval(async () => {
    try {
      const j = await call(`/admin/jobs/${job.id}`);
      show(j);
      if (j.status === "succeeded" || j.status === "failed") { clearInterval(timer); loadStats(); loadCrops(false); }
    } catch (err) { clearInterval(timer); $("job-status").textContent = err.message; }
  }, 500);
}

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const data = new FormData();
  for (const file of $("files").files) data.append("files", file);
  data.append("camera", $("camera").value);
  if ($("captured_at").value) {
    data.append("captured_at", new Date($("captured_at").value).toISOString());
  }
  if ($("person_id").value) data.append("person_id", $("person_id").value);
  const list = $("upload-results");
  list.replaceChildren();
  $("upload-summary").textContent = "Uploading…";
  try {
    const body = await call("/admin/crops", {method: "POST", body: data});
    $("upload-summary").textContent = `${body.added} added, ${body.duplicates} ` +
      `${body.duplicates === 1 ? "duplicate" : "duplicates"} (already in the gallery, not ` +
      `stored twice), ${body.rejected} refused`;
    for (const f of body.files) {
      const li = document.createElement("li");
      li.className = f.status;
      li.textContent = `${f.name}: ${f.status}` + (f.crop_id ? ` (crop ${f.crop_id})` : "") +
        (f.reason ? ` – ${f.reason}` : "");
      list.append(li);
    }
    if (body.job) followJob(body.job);
    loadCrops(false);
  } catch (err) {
    $("upload-summary").textContent = "";
    const li = document.createElement("li"); li.className = "rejected"; li.textContent = err.message;
    list.append(li);
  }
});

// ---- the crops browser: GET /admin/crops, view one, DELETE /admin/crops/{id} ----
const CROPS_PAGE = 48;
let cropsShown = 0;

function when(value) {
  return value ? new Date(value).toLocaleString() : "no capture time";
}

function cropFilters(offset) {
  const params = new URLSearchParams({limit: CROPS_PAGE, offset});
  if ($("crops-camera").value.trim()) params.set("camera", $("crops-camera").value.trim());
  if ($("crops-person").value.trim()) params.set("person_id", $("crops-person").value.trim());
  if ($("crops-status").value) params.set("status", $("crops-status").value);
  return params;
}

function viewCrop(crop) {
  $("crop-view-title").textContent = `Crop ${crop.crop_id}`;
  $("crop-view-img").src = crop.image_url;
  $("crop-view-img").alt = `crop ${crop.crop_id}`;
  const rows = [["camera", crop.camera || "none"], ["captured", when(crop.captured_at)],
                ["person", crop.person_id || "none"], ["file", crop.file_name || ""],
                ["size", `${crop.width}×${crop.height}`], ["status", crop.status],
                ["error", crop.error], ["added", new Date(crop.added_at).toLocaleString()]];
  $("crop-view-meta").replaceChildren(...rows.filter(([, v]) => v).map(([term, value]) => {
    const div = document.createElement("div");
    const dt = document.createElement("dt"); dt.textContent = term;
    const dd = document.createElement("dd"); dd.textContent = value;
    div.append(dt, dd);
    return div;
  }));
  $("crop-view").showModal();
}

async function deleteCrop(crop, tile, button) {
  if (button.dataset.armed !== "yes") {  // two clicks: the first asks, the second deletes
    button.dataset.armed = "yes";
    button.textContent = "Really delete?";
    return;
  }
  button.disabled = true;
  try {
    await call(`/admin/crops/${crop.crop_id}`, {method: "DELETE"});
    tile.remove();
    cropsShown -= 1;
    const total = Number($("crops-count").dataset.total) - 1;
    showCropCount(total);
    loadStats();
  } catch (err) {
    button.disabled = false;
    button.textContent = `Delete failed: ${err.message}`;
  }
}

function cropTile(crop) {
  const tile = document.createElement("figure");
  tile.className = "crop-tile";
  tile.dataset.cropId = crop.crop_id;
  const img = document.createElement("img");
  img.src = crop.thumbnail_url; img.alt = `crop ${crop.crop_id}`; img.loading = "lazy";
  img.addEventListener("click", () => viewCrop(crop));
  const cap = document.createElement("figcaption");
  cap.textContent = `#${crop.crop_id} · ${crop.camera || "no camera"} · ${when(crop.captured_at)}` +
    (crop.person_id ? ` · person ${crop.person_id}` : "") +
    (crop.status !== "indexed" ? ` · ${crop.status}` : "");
  const actions = document.createElement("div");
  actions.className = "actions";
  const view = document.createElement("button");
  view.type = "button"; view.textContent = "View"; view.className = "view";
  view.addEventListener("click", () => viewCrop(crop));
  const del = document.createElement("button");
  del.type = "button"; del.textContent = "Delete"; del.className = "delete danger";
  del.title = "Delete this crop: its file goes, and it leaves search results at once";
  del.addEventListener("click", () => deleteCrop(crop, tile, del));
  actions.append(view, del);
  tile.append(img, cap, actions);
  return tile;
}

function showCropCount(total) {
  $("crops-count").dataset.total = total;
  $("crops-count").textContent = total ? `Showing ${cropsShown} of ${total.toLocaleString()} crops` +
    ", newest first" : "No crops match.";
  $("crops-more").hidden = cropsShown >= total;
}

async function loadCrops(append) {
  const grid = $("crops-grid");
  if (!append) { grid.replaceChildren(); cropsShown = 0; }
  try {
    const page = await call(`/admin/crops?${cropFilters(cropsShown)}`);
    grid.append(...page.crops.map(cropTile));
    cropsShown += page.crops.length;
    showCropCount(page.total);
  } catch (err) {
    $("crops-count").textContent = err.message;
    $("crops-more").hidden = true;
  }
}

async function loadCameraNames() {
  try {
    const cams = await call("/admin/cameras");
    $("camera-names").replaceChildren(...cams.map((c) => new Option(`${c.crop_count} crops`, c.name)));
  } catch (err) { /* no key yet: the stats box says so */ }
}

$("crops-filter").addEventListener("submit", (event) => { event.preventDefault(); loadCrops(false); });
$("crops-more").addEventListener("click", () => loadCrops(true));

$("reindex").addEventListener("click", async () => {
  try { followJob(await call("/admin/reindex", {method: "POST"})); }
  catch (err) { $("job-status").textContent = err.message; }
});
loadStats();
loadCrops(false);
loadCameraNames();
