"use strict";
// The search page: POST /search with filters, a grid of hits, a dialog with per-part scores.
const $ = (id) => document.getElementById(id);
const form = $("search-form");
const results = $("results");
const statusLine = $("status");
const moreButton = $("more");
let lastBody = null;

function apiHeaders() {
  const key = sessionStorage.getItem("tbps-key");
  return key ? {"X-API-Key": key} : {};
}

async function loadCameras() {
  const resp = await fetch("/cameras", {headers: apiHeaders()});
  if (!resp.ok) return;
  const select = $("cameras");
  select.replaceChildren(...(await resp.json()).map((name) => new Option(name, name)));
  select.size = Math.min(Math.max(select.options.length, 1), 4);
}

function when(value) {
  return value ? new Date(value).toLocaleString() : "time unknown";
}

function hitCard(hit, extra) {
  const card = document.createElement("figure");
  card.className = "hit";
  card.dataset.cropId = hit.crop_id;
  const img = document.createElement("img");
  img.src = hit.thumbnail_url; img.alt = `crop ${hit.crop_id}`; img.loading = "lazy";
  const cap = document.createElement("figcaption");
  cap.textContent = `${hit.score.toFixed(3)} · ${hit.camera || "no camera"} · ${when(hit.captured_at)}`;
  if (extra) cap.append(document.createElement("br"), extra);
  card.append(img, cap);
  card.addEventListener("click", () => showDetail(hit));
  return card;
}

function personCard(person) {
  const span = person.first_seen === person.last_seen ? when(person.first_seen)
    : `${when(person.first_seen)} – ${when(person.last_seen)}`;
  const label = `${person.person_id || "unknown person"} · ${person.crop_count} crops · ${span}`;
  const card = hitCard(person.crops[0], label);
  card.classList.add("person");
  return card;
}

function showDetail(hit) {
  $("detail-img").src = hit.image_url;
  $("detail-meta").textContent = `crop ${hit.crop_id} · score ${hit.score.toFixed(4)} · ` +
    `${hit.camera || "no camera"} · ${when(hit.captured_at)} · person ${hit.person_id || "-"}`;
  const rows = Object.entries(hit.parts).map(([name, score]) => {
    const tr = document.createElement("tr");
    const bar = document.createElement("meter");
    bar.min = -1; bar.max = 1; bar.value = score;
    tr.append(...[name, score.toFixed(4)].map((t) => {
      const td = document.createElement("td"); td.textContent = t; return td;
    }));
    const td = document.createElement("td"); td.append(bar); tr.append(td);
    return tr;
  });
  $("detail-parts").tBodies[0].replaceChildren(...rows);
  $("detail").showModal();
}

function requestBody() {
  const body = {description: form.description.value, top_k: Number(form.top_k.value),
                group_by: form.group_by.value};
  const cameras = [...$("cameras").selectedOptions].map((o) => o.value);
  if (cameras.length) body.cameras = cameras;
  if (form.time_from.value) body.time_from = new Date(form.time_from.value).toISOString();
  if (form.time_to.value) body.time_to = new Date(form.time_to.value).toISOString();
  return body;
}

async function runSearch(body, append) {
  statusLine.textContent = "Searching…"; statusLine.className = "";
  const resp = await fetch("/search", {method: "POST",
    headers: {"Content-Type": "application/json", ...apiHeaders()}, body: JSON.stringify(body)});
  const data = await resp.json();
  if (!append) results.replaceChildren();
  if (!resp.ok) {
    statusLine.textContent = data.message || data.detail || `error ${resp.status}`;
    statusLine.className = "error";
    moreButton.hidden = true;
    return;
  }
  const cards = data.group_by === "person" ? data.persons.map(personCard)
    : data.hits.map((h) => hitCard(h));
  results.append(...cards);
  statusLine.textContent = `${results.children.length} of ${data.matching} matching crops` +
    ` in ${data.took_ms} ms (index ${data.index_version})`;
  lastBody = {...body, cursor: data.next_cursor};
  moreButton.hidden = !data.next_cursor;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  runSearch(requestBody(), false);
});
moreButton.addEventListener("click", () => runSearch(lastBody, true));
loadCameras();
