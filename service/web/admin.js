"use strict";
// The admin page: upload crops, start a reindex and follow its job, show stats.
const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = sessionStorage.getItem("tbps-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("tbps-key", keyInput.value);
  loadStats();
});
const headers = () => ({"X-API-Key": keyInput.value});

async function call(path, options = {}) {
  const resp = await fetch(path, {...options, headers: {...headers(), ...(options.headers || {})}});
  const data = await resp.json();
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
      if (j.status === "succeeded" || j.status === "failed") { clearInterval(timer); loadStats(); }
    } catch (err) { clearInterval(timer); $("job-status").textContent = err.message; }
  }, 500);
}

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const data = new FormData();
  for (const file of $("files").files) data.append("files", file);
  data.append("camera", $("camera").value);
  data.append("captured_at", new Date($("captured_at").value).toISOString());
  if ($("person_id").value) data.append("person_id", $("person_id").value);
  const list = $("upload-results");
  list.replaceChildren();
  try {
    const body = await call("/admin/crops", {method: "POST", body: data});
    for (const f of body.files) {
      const li = document.createElement("li");
      li.className = f.status;
      li.textContent = `${f.name}: ${f.status}` + (f.crop_id ? ` (crop ${f.crop_id})` : "") +
        (f.reason ? ` – ${f.reason}` : "");
      list.append(li);
    }
    if (body.job) followJob(body.job);
  } catch (err) {
    const li = document.createElement("li"); li.className = "rejected"; li.textContent = err.message;
    list.append(li);
  }
});

$("reindex").addEventListener("click", async () => {
  try { followJob(await call("/admin/reindex", {method: "POST"})); }
  catch (err) { $("job-status").textContent = err.message; }
});
loadStats();
