"use strict";
// The search page: POST /search with filters; a grid of hits, each with a body figure of its
// per-stripe scores; a detail view with the crop large and the person's other sightings;
// keyboard navigation; the gallery's state (indexing n of N, empty) from GET /status.
// "More like this" searches from a crop (`like`), "Not this person" dismisses one (`exclude`,
// kept for the current search); the search lives in the URL, so Back, reload and a shared link
// give the same results. Confidence (`match`, `good_matches`, `best_match`) and the cross-camera
// sightings (GET /crops/{id}/sightings) are shown when the server sends them.
const $ = (id) => document.getElementById(id);
const form = $("search-form");
const results = $("results");
const statusLine = $("status");
const moreButton = $("more");
const SVG = "http://www.w3.org/2000/svg";
let lastBody = null;
let shown = [];  // the hits behind the cards, in page order (the detail view walks them)
let current = -1;  // index into shown of the hit in the detail view
let scoreMax = 2;
let gallery = null;  // the last GET /status
let cameraInfo = new Map();  // name -> {description, crop_count}
let likeIds = [];  // example crops of the current search ("More like this")
let dismissed = [];  // crops dismissed ("Not this person"), in dismissal order; sent as exclude
const MAX_DISMISSED = 200;  // the API's limit on exclude

function apiHeaders() {
  const key = sessionStorage.getItem("tbps-key");
  return key ? {"X-API-Key": key} : {};
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function when(value) {
  return value ? new Date(value).toLocaleString() : null;
}

function plural(n, word) {
  return `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
}

function cameraLabel(name) {
  const info = cameraInfo.get(name);
  return info && info.description ? `${name} (${info.description})` : name;
}

// ---- the camera picker: type to find, chosen cameras as chips ----
const chosenCameras = new Set();
let activeOption = -1;

function sharedDescription(cams) {  // a description every camera has says nothing per camera
  const first = cams.length > 1 ? cams[0].description : null;
  return first && cams.every((c) => c.description === first) ? first : null;
}

function cameraOptions() {
  const needle = $("camera-search").value.trim().toLowerCase();
  return [...cameraInfo.values()].filter((c) => !chosenCameras.has(c.name) &&
    (c.name.toLowerCase().includes(needle) || (c.description || "").toLowerCase().includes(needle)))
    .slice(0, 100);
}

function showCameraOptions(open = true) {
  const list = $("camera-options");
  const shared = sharedDescription([...cameraInfo.values()]);
  const cams = open ? cameraOptions() : [];
  activeOption = Math.min(activeOption, cams.length - 1);
  list.replaceChildren(...cams.map((c, i) => {
    const li = el("li", {id: `camera-option-${i}`, role: "option",
                         title: c.description || ""}, el("span", {}, c.name),
                  el("span", {className: "muted"}, plural(c.crop_count, "crop") +
                     (c.description && c.description !== shared ? ` · ${c.description}` : "")));
    li.dataset.camera = c.name;
    li.setAttribute("aria-selected", String(i === activeOption));
    li.addEventListener("mousedown", (e) => { e.preventDefault(); chooseCamera(c.name); });
    return li;
  }));
  list.hidden = !cams.length;
  $("camera-search").setAttribute("aria-expanded", String(!list.hidden));
  if (activeOption >= 0) $("camera-search").setAttribute("aria-activedescendant", `camera-option-${activeOption}`);
  else $("camera-search").removeAttribute("aria-activedescendant");
}

function showChips() {
  $("camera-chips").replaceChildren(...[...chosenCameras].map((name) => {
    const remove = el("button", {type: "button", title: `Remove ${name}`, textContent: "×"});
    remove.setAttribute("aria-label", `Remove camera ${name}`);
    remove.addEventListener("click", () => { chosenCameras.delete(name); showChips(); });
    const chip = el("span", {className: "chip", title: cameraLabel(name)}, name, remove);
    chip.dataset.camera = name;
    return chip;
  }));
  showFilterCount();
}

function chooseCamera(name) {
  chosenCameras.add(name);
  $("camera-search").value = "";
  activeOption = -1;
  showChips();
  showCameraOptions(document.activeElement === $("camera-search"));
}

function showFilterCount() {
  const n = chosenCameras.size + (form.time_from.value ? 1 : 0) + (form.time_to.value ? 1 : 0);
  $("filters-summary").textContent = n ? `Filters (${n})` : "Filters";
}

$("camera-search").addEventListener("input", () => { activeOption = 0; showCameraOptions(); });
$("camera-search").addEventListener("focus", () => showCameraOptions());
$("camera-search").addEventListener("blur", () => showCameraOptions(false));
$("camera-search").addEventListener("keydown", (event) => {
  const options = cameraOptions();
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    const step = event.key === "ArrowDown" ? 1 : -1;
    activeOption = Math.max(0, Math.min(options.length - 1, activeOption + step));
    showCameraOptions();
  } else if (event.key === "Enter") {
    const pick = options[Math.max(activeOption, 0)];
    if (pick && (activeOption >= 0 || $("camera-search").value.trim())) chooseCamera(pick.name);
  } else if (event.key === "Backspace" && !$("camera-search").value && chosenCameras.size) {
    chosenCameras.delete([...chosenCameras].pop());
    showChips();
    showCameraOptions();
  } else if (event.key === "Escape") {
    showCameraOptions(false);
  } else {
    return;
  }
  event.preventDefault();
  event.stopPropagation();
});
for (const id of ["time_from", "time_to"]) $(id).addEventListener("change", showFilterCount);

// ---- the gallery's state ----
async function loadCameras() {
  const resp = await fetch("/cameras/info", {headers: apiHeaders()});
  if (!resp.ok) return;
  const cams = await resp.json();
  cameraInfo = new Map(cams.map((c) => [c.name, c]));
  const shared = sharedDescription(cams);
  $("camera-note").textContent = shared ? `Every camera: ${shared}` : "";
  $("camera-note").hidden = !shared;
  if (document.activeElement === $("camera-search")) showCameraOptions();
}

function eta(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  return s >= 90 ? `, about ${Math.round(s / 60)} min left` : `, about ${s} s left`;
}

function showGalleryState(st) {
  const box = $("gallery-state");
  const text = $("gallery-state-text");
  const bar = $("index-progress");
  bar.hidden = true;
  let state = "ready";
  if (st.indexing) {
    state = "indexing";
    const ix = st.indexing;
    text.textContent = ix.status === "queued"
      ? `Indexing is about to start (${plural(ix.total, "crop")}).`
      : `Indexing: ${Math.round(ix.progress * 100)}% done${eta(ix.eta_s)}` +
        `${ix.more_queued && ix.eta_s !== null ? " for this job, more queued after it" : ""}. ` +
        `Searches cover the ${st.searchable.toLocaleString()} of ${plural(ix.total, "crop")} ` +
        "indexed so far.";
    bar.hidden = false;
    // the job's own fraction, the one the percentage and the ETA come from
    bar.value = ix.status === "queued" ? 0 : ix.progress;
  } else if (st.crops === 0) {
    state = "empty";
    text.textContent = "The gallery is empty: upload crops on the Admin page, or run " +
      "`tbps ingest FOLDER`; `make run` fills it from the demo gallery.";
  } else if (st.pending > 0) {
    state = "waiting";
    text.textContent = `${plural(st.pending, "crop")} wait to be indexed, and no index job ` +
      "is running: start one on the Admin page (Reindex) or run `tbps index`.";
  }
  box.dataset.state = state;
  box.hidden = state === "ready";
}

async function loadStatus() {
  try {
    const resp = await fetch("/status", {headers: apiHeaders()});
    if (!resp.ok) throw new Error(`status ${resp.status}`);
    const st = await resp.json();
    const grew = !gallery || gallery.crops !== st.crops || !!gallery.indexing !== !!st.indexing;
    gallery = st;
    showGalleryState(st);
    if (grew) loadCameras();
  } catch (err) {
    $("gallery-state").dataset.state = "error";
    $("gallery-state").hidden = false;
    $("gallery-state-text").textContent = `The server does not answer (${err.message}).`;
  }
  const busy = !gallery || gallery.indexing || gallery.crops === 0 || gallery.pending > 0;
  setTimeout(loadStatus, busy ? 2000 : 15000);
}

// ---- why a crop matches: the body figure ----
function stripeParts(parts) {
  return Object.entries(parts).filter(([name]) => name !== "global")
    .sort(([a], [b]) => a.localeCompare(b, undefined, {numeric: true}));
}

// Stripes named by the body region each mostly covers (a standing person's crop, top to
// bottom); for other stripe counts, by position. The stripe's own name goes in the tooltip.
const REGIONS = {
  1: ["whole body"],
  2: ["upper body", "lower body"],
  3: ["head and shoulders", "torso", "legs and feet"],
  4: ["head and shoulders", "upper body", "lower body", "legs and feet"],
};

function partLabel(name, parts) {
  if (name === "global") return "whole body (global)";
  const stripes = stripeParts(parts);
  const i = stripes.findIndex(([n]) => n === name);
  const k = stripes.length;
  if (i < 0) return name;
  if (REGIONS[k]) return REGIONS[k][i];
  return i === 0 ? `top band (1 of ${k})` : i === k - 1 ? `bottom band (${k} of ${k})`
    : `band ${i + 1} of ${k}`;
}

function partTooltip(name, parts) {
  if (name === "global") return "the whole-body block of the model's vector";
  const stripes = stripeParts(parts);
  const i = stripes.findIndex(([n]) => n === name);
  return `${name}: stripe ${i + 1} of ${stripes.length}, top to bottom`;
}

function matchColour(value) {  // value: 0 (no match) .. 1 (a perfect match)
  const v = Math.max(0, Math.min(1, value));
  return `hsl(${Math.round(20 + v * 110)}, ${Math.round(25 + v * 55)}%, ${Math.round(80 - v * 40)}%)`;
}

function bodyFigure(parts) {
  // A person silhouette cut into the model's horizontal stripes, top to bottom; each stripe's
  // score is its share of the stripes block, so stripes * its score is on a 0..1 scale.
  const stripes = stripeParts(parts);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 40 100");
  svg.setAttribute("class", "body-figure");
  svg.setAttribute("preserveAspectRatio", "none");
  const id = `clip-${Math.random().toString(36).slice(2)}`;
  const defs = document.createElementNS(SVG, "defs");
  const clip = document.createElementNS(SVG, "clipPath");
  clip.id = id;
  const shapes = [["circle", {cx: 20, cy: 10, r: 8}], ["rect", {x: 9, y: 19, width: 22, height: 40, rx: 5}],
                  ["rect", {x: 10, y: 57, width: 9, height: 42, rx: 3}],
                  ["rect", {x: 21, y: 57, width: 9, height: 42, rx: 3}]];
  for (const [tag, attrs] of shapes) {
    const s = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) s.setAttribute(k, v);
    clip.append(s);
  }
  defs.append(clip);
  svg.append(defs);
  const group = document.createElementNS(SVG, "g");
  group.setAttribute("clip-path", `url(#${id})`);
  const k = Math.max(stripes.length, 1);
  stripes.forEach(([name, score], i) => {
    const band = document.createElementNS(SVG, "rect");
    band.setAttribute("x", 0); band.setAttribute("y", (100 / k) * i);
    band.setAttribute("width", 40); band.setAttribute("height", 100 / k + 0.5);
    band.setAttribute("fill", matchColour(score * k));
    band.dataset.part = name;
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${partLabel(name, parts)} (${partTooltip(name, parts)}): ${score.toFixed(3)}`;
    band.append(title);
    group.append(band);
  });
  svg.append(group);
  if ("global" in parts) {
    const frame = document.createElementNS(SVG, "rect");
    frame.setAttribute("x", 1); frame.setAttribute("y", 1);
    frame.setAttribute("width", 38); frame.setAttribute("height", 98); frame.setAttribute("rx", 3);
    frame.setAttribute("fill", "none"); frame.setAttribute("stroke-width", 2);
    frame.setAttribute("stroke", matchColour(parts.global));
    const title = document.createElementNS(SVG, "title");
    title.textContent = `whole body (global): ${parts.global.toFixed(3)}`;
    frame.append(title);
    svg.append(frame);
  }
  return svg;
}

// ---- cards ----
function actionButton(text, label, act) {
  const button = el("button", {type: "button", textContent: text, tabIndex: -1});
  button.setAttribute("aria-label", label);
  button.addEventListener("click", (event) => { event.stopPropagation(); act(); });
  return button;
}

function cardActions(cropIds) {
  const lead = cropIds[0];
  return el("div", {className: "actions"},
    actionButton("More like this", `More like this: crops that look like crop ${lead}`,
                 () => moreLikeThis(lead)),
    actionButton("Not this person", `Not this person: dismiss crop ${lead}`,
                 () => dismiss(cropIds)));
}

function hitCard(hit, caption, cropIds = [hit.crop_id]) {
  const index = shown.push(hit) - 1;
  const card = el("figure", {className: "hit", tabIndex: index === 0 ? 0 : -1});
  card.dataset.cropId = hit.crop_id;
  card.dataset.index = index;
  const img = el("img", {src: hit.thumbnail_url, alt: `crop ${hit.crop_id}`, loading: "lazy"});
  card.append(el("div", {className: "pics"}, img, bodyFigure(hit.parts)), caption,
              cardActions(cropIds));
  card.addEventListener("click", () => showDetail(Number(card.dataset.index)));
  card.addEventListener("focus", () => rove(card));
  if (index === 0) rove(card);
  return card;
}

function matchBadge(match) {  // strong / possible / weak, when the server grades its hits
  if (!["strong", "possible", "weak"].includes(match)) return null;
  const badge = el("span", {className: `match match-${match}`, textContent: match,
                            title: `${match} match`});
  return badge;
}

function scoreText(hit) {
  return el("span", {className: "score", title: `score ${hit.score.toFixed(4)} of at most ` +
    `${scoreMax} (the sum of the parts; see "What the score means")`}, hit.score.toFixed(3),
            el("span", {className: "muted"}, ` / ${scoreMax}`));
}

function cropCaption(hit) {
  const bits = [hit.camera ? el("span", {title: cameraLabel(hit.camera)}, hit.camera) : null,
                when(hit.captured_at), hit.person_id ? `person ${hit.person_id}` : null];
  const cap = el("figcaption", {}, scoreText(hit));
  const badge = matchBadge(hit.match);
  if (badge) cap.append(" ", badge);
  for (const bit of bits.filter(Boolean)) cap.append(" · ", bit);
  return cap;
}

function personCard(person) {
  const first = when(person.first_seen), last = when(person.last_seen);
  const span = first && last && first !== last ? `${first} – ${last}` : first;
  const who = person.person_id ? `person ${person.person_id}` : "no person id";
  const cap = el("figcaption", {}, scoreText(person.crops[0]), " · ", who, el("br"),
                 plural(person.crop_count, "matching crop"));
  if (span) cap.append(" · ", span);
  if (person.crops.length > 1) {
    cap.append(el("div", {className: "strip"}, ...person.crops.slice(1).map((c) =>
      el("img", {src: c.thumbnail_url, alt: `crop ${c.crop_id}`, title: c.score.toFixed(3)}))));
  }
  const badge = matchBadge(person.crops[0].match);
  if (badge) cap.insertBefore(badge, cap.childNodes[1]);
  const card = hitCard(person.crops[0], cap, person.crops.map((c) => c.crop_id));
  card.classList.add("person");
  card.dataset.personId = person.person_id || "";
  return card;
}

// ---- the detail view ----
function metaRow(list, term, value) {
  if (value !== null && value !== undefined && value !== "") {
    list.append(el("dt", {}, term), el("dd", {}, value));
  }
}

function showCrop(crop, hit) {
  $("detail").dataset.cropId = crop.crop_id;
  $("detail-img").src = crop.image_url;
  $("detail-img").alt = `crop ${crop.crop_id}`;
  $("detail-title").textContent = hit ? `Result ${current + 1} of ${shown.length} · crop ${crop.crop_id}`
    : `Crop ${crop.crop_id} (not on this result page)`;
  const meta = $("detail-meta");
  meta.replaceChildren();
  if (hit) metaRow(meta, "score", `${hit.score.toFixed(4)} of at most ${scoreMax}`);
  metaRow(meta, "camera", crop.camera ? cameraLabel(crop.camera) : "unknown");
  metaRow(meta, "captured", when(crop.captured_at) || "unknown");
  metaRow(meta, "person", crop.person_id);
  metaRow(meta, "file", crop.file_name);
  metaRow(meta, "crop id", String(crop.crop_id));
  $("detail-figure").replaceChildren(hit ? bodyFigure(hit.parts) : "");
  const rows = hit ? Object.entries(hit.parts).map(([name, score]) => {
    const bar = el("meter", {min: 0, max: name === "global" ? 1 : 1 / Math.max(stripeParts(hit.parts).length, 1),
                              value: Math.max(score, 0)});
    const row = el("tr", {}, el("td", {title: partTooltip(name, hit.parts)}, partLabel(name, hit.parts)),
                   el("td", {}, score.toFixed(4)), el("td", {}, bar));
    row.dataset.part = name;
    return row;
  }) : [];
  $("detail-parts").tBodies[0].replaceChildren(...rows);
  $("detail-parts").hidden = !hit;
  for (const li of $("detail-sightings").querySelectorAll("[data-crop-id]")) {
    li.classList.toggle("current", li.dataset.cropId === String(crop.crop_id));
  }
}

function openSighting(s, personId) {  // a sighting: its result when shown, else the crop alone
  const at = shown.findIndex((h) => h.crop_id === s.crop_id);
  if (at >= 0) { current = at; showCrop(shown[at], shown[at]); }
  else showCrop({...s, person_id: s.person_id || personId}, null);
}

let sightingsTicket = 0;  // the latest loadSightings: an older answer arriving late is dropped

async function loadSightings(personId, cropId) {
  const ticket = ++sightingsTicket;
  $("detail-sightings").hidden = true;
  const resp = await fetch(`/crops/${cropId}/sightings`, {headers: apiHeaders()});
  if (resp.ok) {
    const data = await resp.json();
    // the operator may have moved on to another result meanwhile: a late answer is dropped
    if (ticket === sightingsTicket) showTimeline(data, cropId);
  } else if ([404, 405].includes(resp.status)) {  // a server without it: the person's strip
    await loadPersonStrip(personId, cropId, ticket);
  }
}

function sightingItem(s, tag, personId) {
  const title = tag === "li" ? s.file_name || ""  // the strip: the file name, as before
    : [s.file_name, s.camera, when(s.captured_at), s.by ? `found by ${s.by}` : null]
      .filter(Boolean).join(" · ");
  const item = el(tag, {tabIndex: 0, title},
                  el("img", {src: s.thumbnail_url, alt: `crop ${s.crop_id}`, loading: "lazy"}));
  item.dataset.cropId = s.crop_id;
  const open = () => openSighting(s, personId);
  item.addEventListener("click", open);
  item.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  return item;
}

// The sightings timeline: one row per camera, each crop placed by its capture time on a time
// axis shared by every row; crops without a time sit at the row's end.
function showTimeline(data, cropId) {
  const list = data.sightings || [];
  const times = list.map((s) => Date.parse(s.captured_at)).filter((t) => !Number.isNaN(t));
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const span = times.length && t1 > t0 ? t1 - t0 : 1;
  const cameras = (data.cameras && data.cameras.length ? data.cameras.map((c) => c.camera)
    : [...new Set(list.map((s) => s.camera))]);
  const rows = cameras.map((camera) => {
    const info = (data.cameras || []).find((c) => c.camera === camera);
    const mine = list.filter((s) => s.camera === camera);
    const track = el("div", {className: "track"}, ...mine.map((s) => {
      const item = sightingItem(s, "button", data.person_id);
      const t = Date.parse(s.captured_at);
      item.style.left = Number.isNaN(t) ? "100%" : `${((t - t0) / span) * 100}%`;
      item.classList.toggle("current", s.crop_id === cropId);
      return item;
    }));
    const label = el("div", {className: "camera"}, camera ? cameraLabel(camera) : "no camera",
                     el("br"), el("span", {className: "muted"},
                                  plural(info ? info.count : mine.length, "crop")));
    if (info && info.first_seen) label.title = `${when(info.first_seen)} – ${when(info.last_seen)}`;
    return el("div", {className: "row"}, label, track);
  });
  const axis = times.length ? el("div", {className: "axis muted"}, el("span", {}, when(t0)),
                                 el("span", {}, t1 > t0 ? when(t1) : "")) : null;
  const timeline = $("sightings-timeline");
  timeline.replaceChildren(...rows, axis || "");
  timeline.hidden = false;
  $("sightings-list").hidden = true;
  const how = data.precision !== null && data.precision !== undefined
    ? ` (precision ${Number(data.precision).toFixed(2)}, recall ${Number(data.recall).toFixed(2)})` : "";
  $("sightings-title").textContent = `Sightings: ${plural(list.length, "crop")} on ` +
    `${plural(rows.length, "camera")}${data.truncated ? " (the first ones)" : ""}${how}`;
  $("detail-sightings").hidden = !list.length;
}

async function loadPersonStrip(personId, cropId, ticket) {
  if (!personId) return;
  const resp = await fetch(`/persons/${encodeURIComponent(personId)}/sightings`,
                           {headers: apiHeaders()});
  if (!resp.ok) return;
  const data = await resp.json();
  if (ticket !== sightingsTicket) return;
  const timed = data.sightings.some((s) => s.captured_at);
  $("sightings-title").textContent = `Person ${personId}: ${plural(data.sightings.length, "sighting")}` +
    `${data.truncated ? " (the first 500)" : ""}, ` +
    (timed ? "in time order" : "in the order they were added (no capture times)");
  $("sightings-list").replaceChildren(...data.sightings.map((s, i) => {
    const li = sightingItem(s, "li", personId);
    li.append(`${i + 1}. ${s.camera || "no camera"}`);
    if (s.captured_at) li.append(el("br"), when(s.captured_at));
    li.classList.toggle("current", s.crop_id === cropId);
    return li;
  }));
  $("sightings-list").hidden = false;
  $("sightings-timeline").hidden = true;
  $("detail-sightings").hidden = false;
}

function showDetail(index) {
  if (index < 0 || index >= shown.length) return;
  current = index;
  const hit = shown[index];
  showCrop(hit, hit);
  $("detail-prev").disabled = index === 0;
  $("detail-next").disabled = index === shown.length - 1;
  loadSightings(hit.person_id, hit.crop_id);
  if (!$("detail").open) $("detail").showModal();
}

$("detail-prev").addEventListener("click", () => showDetail(current - 1));
$("detail-next").addEventListener("click", () => showDetail(current + 1));
$("detail").addEventListener("close", () => {
  const card = results.querySelector(`.hit[data-index="${current}"]`);
  if (card) card.focus();
});

// ---- keyboard ----
// The results are one tab stop (a roving tabindex): Tab or the down arrow from the search box
// lands on the last result visited (the first at first), Shift+Tab goes back to the box.
function rove(card) {  // the card and its buttons are the results' tab stops
  for (const other of results.querySelectorAll(".hit[tabindex='0']")) other.tabIndex = -1;
  for (const b of results.querySelectorAll(".hit .actions button")) b.tabIndex = -1;
  card.tabIndex = 0;
  for (const b of card.querySelectorAll(".actions button")) b.tabIndex = 0;
}

function resultStop() {
  return results.querySelector(".hit[tabindex='0']") || results.querySelector(".hit");
}

$("description").addEventListener("keydown", (event) => {
  const stop = resultStop();
  if (stop && ((event.key === "Tab" && !event.shiftKey) || event.key === "ArrowDown")) {
    stop.focus();
    event.preventDefault();
    event.stopPropagation();  // the page's arrow keys must not move on from the result
  }
});
results.addEventListener("keydown", (event) => {
  if (event.key === "Tab" && event.shiftKey && event.target.classList.contains("hit")) {
    $("description").focus();
    event.preventDefault();
  }
});

function columns() {
  const cards = [...results.children];
  if (!cards.length) return 1;
  const top = cards[0].offsetTop;
  const n = cards.findIndex((c) => c.offsetTop !== top);
  return n < 0 ? cards.length : n;
}

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if ($("detail").open) {
    if (event.key === "ArrowLeft") { showDetail(current - 1); event.preventDefault(); }
    if (event.key === "ArrowRight") { showDetail(current + 1); event.preventDefault(); }
    return;
  }
  if (event.key === "/" && !typing) { $("description").focus(); event.preventDefault(); return; }
  if (document.activeElement.tagName === "BUTTON") return;  // a card's button handles its keys
  const card = document.activeElement.closest && document.activeElement.closest("#results .hit");
  if (!card) return;
  const at = Number(card.dataset.index);
  const step = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns()}[event.key];
  if (step) {
    const next = results.querySelector(`.hit[data-index="${at + step}"]`);
    if (next) next.focus();
    event.preventDefault();
  } else if (event.key === "Enter" || event.key === " ") {
    showDetail(at);
    event.preventDefault();
  }
});

// ---- searching ----
function perPage() {
  return Math.max(1, Math.min(100, Number(form.top_k.value) || 24));
}

function requestBody() {
  const body = {top_k: perPage(), group_by: form.group_by.value};
  const words = form.description.value.trim();
  if (words) body.description = words;
  if (likeIds.length) body.like = [...likeIds];
  if (dismissed.length) body.exclude = [...dismissed];
  const cameras = [...chosenCameras];
  if (cameras.length) body.cameras = cameras;
  if (form.time_from.value) body.time_from = new Date(form.time_from.value).toISOString();
  if (form.time_to.value) body.time_to = new Date(form.time_to.value).toISOString();
  if (form.min_height.value) body.min_height = Number(form.min_height.value);
  return body;
}

function filtersText(body) {
  const bits = [];
  if (body.cameras) bits.push(`cameras ${body.cameras.join(", ")}`);
  if (body.time_from) bits.push(`from ${when(body.time_from)}`);
  if (body.time_to) bits.push(`to ${when(body.time_to)}`);
  if (body.min_height) bits.push(`at least ${body.min_height} px high`);
  return bits.join(", ");
}

function showNoResults(body, data) {
  const filters = filtersText(body);
  const box = $("empty-results");
  if (data.matching === 0 && filters) {
    box.textContent = `No indexed crop passes the filters (${filters}). Crops without a ` +
      "capture time never pass a time filter. Clear the filters to search everything.";
  } else if (data.matching === 0) {
    box.textContent = gallery && gallery.indexing
      ? "Nothing is searchable yet: indexing has just started; try again in a few seconds."
      : "The gallery has no indexed crops yet.";
  } else {
    box.textContent = "No results.";
  }
  box.hidden = false;
}

// ---- the search in the URL: ?q=&like=1,2&exclude=3&camera=a&camera=b&from=&to=&min_height=
// &group=person&per=24 (times as UTC ISO strings) ----
function searchUrl(body) {
  const params = new URLSearchParams();
  if (body.description) params.set("q", body.description);
  if (body.like) params.set("like", body.like.join(","));
  if (body.exclude) params.set("exclude", body.exclude.join(","));
  for (const cam of body.cameras || []) params.append("camera", cam);
  if (body.time_from) params.set("from", body.time_from);
  if (body.time_to) params.set("to", body.time_to);
  if (body.min_height) params.set("min_height", body.min_height);
  if (body.group_by !== "crop") params.set("group", body.group_by);
  params.set("per", body.top_k);
  return `${location.pathname}?${params}`;
}

function idList(text) {  // "1,2,x" -> [1, 2]: what is not a crop id is dropped
  return (text || "").split(",").map(Number).filter((n) => Number.isInteger(n) && n > 0);
}

function localInput(iso) {  // a UTC ISO time -> the datetime-local field's local "YYYY-MM-DDTHH:MM"
  const t = new Date(iso);
  if (!iso || Number.isNaN(t.getTime())) return "";
  return new Date(t.getTime() - t.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function restoreFromUrl() {  // -> whether the URL holds a search to run
  const params = new URLSearchParams(location.search);
  form.description.value = params.get("q") || "";
  likeIds = idList(params.get("like")).slice(0, 10);
  dismissed = idList(params.get("exclude")).slice(-MAX_DISMISSED);
  chosenCameras.clear();
  for (const cam of params.getAll("camera")) chosenCameras.add(cam);
  form.time_from.value = localInput(params.get("from"));
  form.time_to.value = localInput(params.get("to"));
  form.min_height.value = params.get("min_height") || "";
  form.group_by.value = params.get("group") === "person" ? "person" : "crop";
  if (params.get("per")) form.top_k.value = Math.max(1, Math.min(100, Number(params.get("per")) || 24));
  showChips(); showLikeChips(); showDismissed();
  return Boolean(form.description.value.trim() || likeIds.length);
}

function search(how = "push") {  // a new search from the page's state; "push": a Back step
  const body = requestBody();
  const url = searchUrl(body);
  if (how === "push" && url !== location.pathname + location.search) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
  return runSearch(body, false);
}

window.addEventListener("popstate", () => {
  if (restoreFromUrl()) { runSearch(requestBody(), false); return; }
  results.replaceChildren(); shown = [];
  statusLine.textContent = ""; moreButton.hidden = true;
});

// ---- search by example, dismissal ----
function showLikeChips() {
  const box = $("like-chips");
  box.replaceChildren(...likeIds.map((id) => {
    const remove = el("button", {type: "button", title: `Remove example ${id}`, textContent: "×"});
    remove.setAttribute("aria-label", `Remove example crop ${id}`);
    remove.addEventListener("click", () => {
      likeIds = likeIds.filter((x) => x !== id);
      showLikeChips();
      if (likeIds.length || form.description.value.trim()) search();
      else form.description.focus();
    });
    const chip = el("span", {className: "chip example", title: `searching for crops like crop ${id}`},
                    el("img", {src: `/crops/${id}/thumbnail`, alt: ""}), `like crop ${id}`, remove);
    chip.dataset.cropId = id;
    return chip;
  }));
  if (likeIds.length) box.prepend(el("span", {className: "chip-label"}, "Example search:"));
  box.hidden = !likeIds.length;
  form.description.required = !likeIds.length;
  form.description.placeholder = likeIds.length
    ? "Optional: add words to the example search, e.g. carrying a bag"
    : "Describe the person, e.g. a woman in a red coat with a black backpack";
}

function moreLikeThis(cropId) {  // a like search from this crop, with the current filters
  likeIds = [cropId];
  dismissed = dismissed.filter((x) => x !== cropId);
  form.description.value = "";
  showLikeChips(); showDismissed();
  if ($("detail").open) $("detail").close();
  search();
}

function showDismissed() {
  $("dismissed").hidden = !dismissed.length;
  $("dismissed-text").textContent = `${dismissed.length} dismissed`;
}

function dismiss(cropIds) {  // the tile goes; the crops stay out of this search's pages
  const gone = new Set(cropIds);
  dismissed = [...dismissed.filter((x) => !gone.has(x)), ...cropIds].slice(-MAX_DISMISSED);
  const at = shown.findIndex((h) => gone.has(h.crop_id));
  const card = results.querySelector(`.hit[data-index="${at}"]`);
  if (card) {
    const next = card.nextElementSibling || card.previousElementSibling;
    card.remove();
    shown.splice(at, 1);
    [...results.children].forEach((c, i) => { c.dataset.index = i; });
    if (next && document.activeElement === document.body) next.focus();
  }
  showDismissed();
  if (lastBody) {  // reload and a shared link keep the dismissals (not a Back step of its own)
    history.replaceState(null, "", searchUrl({...lastBody, top_k: perPage(),
                                              exclude: dismissed.length ? [...dismissed] : undefined}));
  }
  if (!results.children.length && lastBody && lastBody.cursor) loadMore();
  return at;
}

$("dismissed-undo").addEventListener("click", () => { dismissed.pop(); showDismissed(); search("replace"); });
$("dismissed-clear").addEventListener("click", () => { dismissed = []; showDismissed(); search("replace"); });
$("detail-like").addEventListener("click", () => moreLikeThis(Number($("detail").dataset.cropId)));
$("detail-dismiss").addEventListener("click", () => {
  const cropId = Number($("detail").dataset.cropId);
  const at = dismiss([cropId]);
  if (at >= 0 && shown.length) showDetail(Math.min(at, shown.length - 1));
  else $("detail").close();
});

// ---- running a search ----
let shownPersons = 0;

function showConfidence(data, what) {
  const best = data.best_match && typeof data.best_match === "object"
    ? data.best_match.match : data.best_match;
  $("no-good-match").hidden = best !== "weak" || !results.children.length;
  const good = Number.isInteger(data.good_matches)
    ? `${data.good_matches.toLocaleString()} good match${data.good_matches === 1 ? "" : "es"} · ` : "";
  const indexing = gallery && gallery.indexing
    ? " · still indexing: the results cover the crops indexed so far" : "";
  statusLine.textContent = `${good}Showing ${what} of ${data.matching.toLocaleString()} matching ` +
    `crops in ${data.took_ms} ms${indexing}`;
}

async function runSearch(body, append) {  // -> the response's data, or null on an error
  statusLine.textContent = "Searching…"; statusLine.className = "";
  $("empty-results").hidden = true;
  let resp, data;
  try {
    resp = await fetch("/search", {method: "POST",
      headers: {"Content-Type": "application/json", ...apiHeaders()}, body: JSON.stringify(body)});
    data = await resp.json();
  } catch (err) {
    statusLine.textContent = `The server does not answer: ${err.message}`;
    statusLine.className = "error";
    return null;
  }
  if (!append) { results.replaceChildren(); shown = []; shownPersons = 0; }
  if (!resp.ok) {
    statusLine.textContent = resp.status === 503 && gallery && gallery.indexing
      ? "Nothing is searchable yet: the first crops are being indexed; try again in a few seconds."
      : data.message || data.detail || `error ${resp.status}`;
    statusLine.className = "error";
    moreButton.hidden = true;
    $("no-good-match").hidden = true;
    return null;
  }
  scoreMax = data.score_max || scoreMax;
  $("score-max").textContent = scoreMax;
  const cards = data.group_by === "person" ? data.persons.map(personCard)
    : data.hits.map((h) => hitCard(h, cropCaption(h)));
  results.append(...cards);
  shownPersons += data.persons.length;
  const what = data.group_by === "person" ? plural(shownPersons, "person")
    : plural(results.children.length, "crop");
  showConfidence(data, what);
  if (!results.children.length) showNoResults(body, data);
  lastBody = {...body, cursor: data.next_cursor};
  moreButton.hidden = !data.next_cursor;
  return data;
}

function sameIds(a, b) {
  return (a || []).length === (b || []).length && (a || []).every((x) => (b || []).includes(x));
}

async function loadMore() {
  if (sameIds(lastBody.exclude, dismissed)) return runSearch(lastBody, true);
  // dismissed since the last page: a cursor pages through its own dismissals only, so the
  // pages shown so far and the next one are fetched again with the new list
  const want = results.children.length + perPage();
  const base = {...lastBody, cursor: undefined, exclude: dismissed.length ? [...dismissed] : undefined};
  let data = await runSearch({...base, top_k: Math.min(100, want)}, false);
  while (data && data.next_cursor && results.children.length < want) {
    data = await runSearch({...base, top_k: Math.min(100, want - results.children.length),
                            cursor: data.next_cursor}, true);
  }
  if (lastBody) lastBody.top_k = perPage();
  return data;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  search();
});
moreButton.addEventListener("click", () => loadMore());
$("clear-filters").addEventListener("click", () => {
  chosenCameras.clear();
  form.time_from.value = ""; form.time_to.value = ""; form.min_height.value = "";
  showChips();
});
if (restoreFromUrl()) search("replace");
loadStatus();
