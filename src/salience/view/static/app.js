// salience view: the table of a study's images, ranked views, and one image's maps side by side.
// The URL's hash holds what is on screen, `#VIEW?KEY=VALUE&…` (docs/view.md): every user action
// pushes a history entry, and back, forward or an opened link restore the view from the hash.
"use strict";

const $ = (sel) => document.querySelector(sel);
const VIEWS = ["table", "disagreement", "instability", "out-of-set"];
const UI_KEYS = ["image", "image_class", "oos", "hide", "own"];  // the page's own keys: not sent to the server
const HINT = "Select a row to see the image and every model's map.";
const LIMIT = 100;
let meta = null;
let view = "table";
let state = {};      // per view: its URL parameters (filters, sort, desc, offset, search, selection, hide, own)
let page = null;     // the page of rows shown
let item = null;     // the item shown in the detail panel
let applied = "";    // the hash the page shows
let shown = null;    // what the detail panel shows (detailKey)
let loads = 0;       // the newest table request: older answers are dropped
let opens = 0;       // the newest detail request: likewise

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw Object.assign(new Error(body.error || r.statusText), { status: r.status });
  return body;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") Object.entries(v).forEach(([ev, f]) => e.addEventListener(ev, f));
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// --- the URL --------------------------------------------------------------------------------------------

function hashOf(v, s) {
  const q = new URLSearchParams();
  for (const k of Object.keys(s).sort()) {
    const val = s[k];
    if (val === "" || val === undefined || val === null || (k === "offset" && +val === 0)) continue;
    q.set(k, val);
  }
  const text = q.toString();
  return "#" + v + (text ? "?" + text : "");
}

function parseHash(hash) {
  const text = hash.replace(/^#/, "");
  const i = text.indexOf("?");
  return i < 0 ? [text, new URLSearchParams()] : [text.slice(0, i), new URLSearchParams(text.slice(i + 1))];
}

// the keys a view's URL may hold: a list of the values allowed, or null for any value
function settings(v) {
  const f = meta.filters, several = meta.methods.length > 1 ? meta.methods : undefined;
  const paging = { search: null, sort: null, desc: null, offset: null, hide: null };
  const pick = { image: null, image_class: null, own: ["1"], ...paging };
  return {
    table: { group: f.group, model: f.model, class: f.class, method: f.method, split: f.split, ...pick },
    disagreement: { measure: meta.measures, a: meta.groups, b: meta.groups, class: f.class, method: several, ...pick },
    instability: { group: meta.groups, class: f.class, method: several, ...pick },
    "out-of-set": { oos: null, ...paging },
  }[v];
}

// the URL's parameters a view can show; the others are ignored with a note
function clean(v, params) {
  const allowed = settings(v), s = {};
  for (const [k, val] of params) {
    const ok = Object.hasOwn(allowed, k) ? allowed[k] : undefined;
    if (ok === undefined) warn(`ignored ${k}=${val}: not a setting of this view`);
    else if (ok !== null && !ok.map(String).includes(val)) warn(`ignored ${k}=${val}: not in this study`);
    else s[k] = val;
  }
  return s;
}

function warn(text) {
  $("#url-note").append(el("div", {}, text));
}

// record the state in the URL: a new history entry, or (`replace`) the current one corrected
function push(replace = false) {
  const hash = hashOf(view, state[view]);
  if (hash !== location.hash) history[replace ? "replaceState" : "pushState"](null, "", hash);
  applied = hash;
  document.querySelectorAll("nav a[data-view]").forEach((a) => {
    a.classList.toggle("active", a.dataset.view === view);
    a.href = hashOf(a.dataset.view, state[a.dataset.view] || {});
  });
}

// show what the URL says (opened, back, forward, a link followed)
function applyURL() {
  if (applied && location.hash === applied) return;
  $("#url-note").replaceChildren();
  const [name, params] = parseHash(location.hash);
  if (name && !VIEWS.includes(name)) warn(`ignored view "${name}": showing the table`);
  view = VIEWS.includes(name) ? name : "table";
  state[view] = clean(view, params);
  controls();
  push(true);
  load();
}

// a user action changed state[view]: a history entry, then the rows
function go() {
  $("#url-note").replaceChildren();
  push();
  load();
}

// --- the controls ---------------------------------------------------------------------------------------

function select(name, options, value, label) {
  const s = el("select", { name, id: "f-" + name });
  for (const [v, text] of options) {
    const o = el("option", { value: v }, text);
    if (v === value) o.selected = true;
    s.append(o);
  }
  s.addEventListener("change", () => { state[view][name] = s.value; state[view].offset = 0; go(); });
  return el("label", {}, label + " ", s);
}

function searchBox() {
  const i = el("input", { id: "search", type: "search", placeholder: "image path contains…", value: state[view].search || "" });
  let timer = null;
  i.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state[view].search = i.value; state[view].offset = 0; go(); }, 250);
  });
  return el("label", {}, "search ", i);
}

function className(c) {
  return meta.classes[+c] !== undefined ? `${c} (${meta.classes[+c]})` : c;
}

function controls() {
  const box = $("#controls");
  box.replaceChildren();
  const any = (values, fmt = (v) => v) => [["", "any"], ...values.map((v) => [v, fmt(v)])];
  const s = state[view];
  if (view === "table") {
    for (const f of ["group", "model", "class", "method", "split"]) {
      box.append(select(f, any(meta.filters[f], f === "class" ? className : undefined), s[f] || "", f));
    }
    box.append(searchBox());
  } else if (view === "disagreement") {
    const groups = meta.groups.map((g) => [g, g]);
    s.measure = s.measure || meta.measures[0];
    s.a = s.a || meta.groups[0];
    s.b = s.b || meta.groups[1] || meta.groups[0];
    box.append(select("measure", meta.measures.map((m) => [m, m]), s.measure, "measure"));
    box.append(select("a", groups, s.a, "group"));
    box.append(select("b", groups, s.b, "minus group"));
    if (meta.methods.length > 1) box.append(select("method", any(meta.methods), s.method || "", "method"));
    box.append(searchBox());
  } else if (view === "instability") {
    box.append(select("group", any(meta.groups), s.group || "", "group"));
    box.append(select("class", any(meta.filters.class, className), s.class || "", "class"));
    if (meta.methods.length > 1) box.append(select("method", any(meta.methods), s.method || "", "method"));
    box.append(searchBox());
  }
}

// --- the rows -------------------------------------------------------------------------------------------

function endpoint() {
  return { table: "/api/rows", disagreement: "/api/disagreement", instability: "/api/instability", "out-of-set": "/api/out-of-set" }[view];
}

function query() {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(state[view])) if (v !== "" && v !== undefined && !UI_KEYS.includes(k)) q.set(k, v);
  q.set("limit", LIMIT);
  return q;
}

async function load() {
  const seq = ++loads, t0 = performance.now();
  $("#note").textContent = "";
  let got;
  try {
    got = await getJSON(endpoint() + "?" + query());
  } catch (err) {
    if (seq === loads) failed(err);
    return;
  }
  if (seq !== loads) return;
  page = got;
  render();
  showDetail();
  document.body.dataset.tableMs = Math.round(performance.now() - t0);
  document.body.dataset.loaded = view;
}

// a value the server refuses (`KEY: why`, 400) is dropped with a note and the rows asked for again
function failed(err) {
  const s = state[view], key = (err.message.match(/^(\w+):/) || [])[1];
  if (err.status === 400 && key && Object.hasOwn(s, key)) {
    warn(`ignored ${key}=${s[key]}: ${err.message}`);
    delete s[key];
    controls();
    push(true);
    return load();
  }
  $("#note").textContent = err.message;
  page = null;
  $("#grid thead").replaceChildren();
  $("#grid tbody").replaceChildren();
  $("#column-list").replaceChildren();
  $("#range").textContent = "";
  showDetail();
  document.body.dataset.loaded = view;
}

function fmt(v, numeric) {
  if (v === null) return "";
  if (!numeric) return v;
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}

// the columns kept in place while the others scroll: the labels (but split) and the out-of-set index
function pinned() {
  return page.columns.filter((c) => c === "index" || (c !== "split" && !page.numeric.includes(c)));
}

function hidden() {
  return new Set((state[view].hide || "").split(",").filter(Boolean));
}

function optional() {
  const keep = pinned();
  return page.columns.filter((c) => !keep.includes(c));
}

function render() {
  dropUnknownHidden();
  const off = hidden(), pins = pinned();
  const cols = [...pins, ...optional().filter((c) => !off.has(c))];
  $("#grid thead").replaceChildren(el("tr", {}, ...cols.map((c) => heading(c, pins.includes(c)))));
  $("#grid tbody").replaceChildren(...records().map((rec) => line(rec, cols, pins)));
  pin(pins.length);
  chooser();
  pager();
  mark();
}

function records() {
  return page.rows.map((row) => Object.fromEntries(page.columns.map((c, i) => [c, row[i]])));
}

function heading(c, isPin) {
  const sorted = c === page.sort;
  const cls = (sorted ? "sorted " : "") + (isPin ? "pin" : "");
  const arrow = sorted ? (page.desc ? " ▼" : " ▲") : "";
  return el("th", { class: cls.trim(), "data-col": c, on: { click: () => sortBy(c) } }, c + arrow);
}

function sortBy(c) {
  const s = state[view];
  s.desc = c === page.sort ? (page.desc ? 0 : 1) : 0;
  s.sort = c;
  s.offset = 0;
  go();
}

function line(rec, cols, pins) {
  const tr = el("tr", { on: { click: () => pick(rec) } });
  tr.rec = rec;
  for (const c of cols) {
    const numeric = page.numeric.includes(c);
    const cls = (numeric ? "num " : "") + (pins.includes(c) ? "pin" : "");
    tr.append(el("td", { class: cls.trim() }, c === "class" ? className(rec[c]) : fmt(rec[c], numeric)));
  }
  return tr;
}

// sticky columns: each one's left offset is the width of those before it
function pin(n) {
  let left = 0;
  const heads = [...document.querySelectorAll("#grid th")].slice(0, n);
  heads.forEach((th, i) => {
    document.querySelectorAll(`#grid tr > :nth-child(${i + 1})`).forEach((cell) => {
      cell.style.left = left + "px";
      cell.classList.toggle("pin-end", i === n - 1);
    });
    left += th.getBoundingClientRect().width;
  });
}

function pager() {
  const end = Math.min(page.offset + page.rows.length, page.total);
  $("#range").textContent = page.total ? `${page.offset + 1}–${end} of ${page.total}` : "no rows";
  $("#prev").disabled = page.offset === 0;
  $("#next").disabled = end >= page.total;
}

// --- the column chooser ---------------------------------------------------------------------------------

function chooser() {
  const off = hidden(), cols = optional();
  const boxes = cols.map((c) => {
    const box = el("input", { type: "checkbox", "data-col": c });
    box.checked = !off.has(c);
    box.addEventListener("change", () => showColumn(c, box.checked));
    return el("label", {}, box, " " + c);
  });
  $("#columns summary").textContent = `columns: ${cols.length - off.size} of ${cols.length} shown`;
  $("#column-list").replaceChildren(...boxes);
}

function showColumn(c, on) {
  const off = hidden();
  if (on) off.delete(c);
  else off.add(c);
  state[view].hide = [...off].join(",");
  go();
}

function dropUnknownHidden() {
  const off = [...hidden()], cols = optional();
  const unknown = off.filter((c) => !cols.includes(c));
  if (!unknown.length) return;
  warn(`ignored hide=${unknown.join(",")}: no such column here`);
  state[view].hide = off.filter((c) => cols.includes(c)).join(",");
  push(true);
}

// --- the selection --------------------------------------------------------------------------------------

function pick(rec) {
  const s = state[view];
  if (view === "out-of-set") s.oos = String(rec.index);
  else Object.assign(s, { image: rec.image, image_class: rec.class === undefined ? "" : String(rec.class) });
  $("#url-note").replaceChildren();
  push();
  mark();
  showDetail(true);
}

function mark() {
  const s = state[view];
  document.querySelectorAll("#grid tbody tr").forEach((tr) => {
    const r = tr.rec;
    const on = view === "out-of-set" ? String(r.index) === s.oos
      : r.image === s.image && (!s.image_class || String(r.class) === s.image_class);
    tr.classList.toggle("selected", on);
  });
}

// the item query of the selection ("" when none): image, class, and the method the rows are filtered to
function itemQuery() {
  const s = state[view];
  if (view === "out-of-set" || !s.image) return "";
  const q = new URLSearchParams({ image: s.image });
  if (s.image_class) q.set("class", s.image_class);
  if (s.method) q.set("method", s.method);
  return q.toString();
}

function detailKey() {
  const s = state[view];
  return view === "out-of-set" ? `oos ${s.oos}` : `${view} ${itemQuery()} ${s.own || ""}`;
}

// draw the selection in the detail panel unless it is there already (or `force`)
function showDetail(force = false) {
  const key = detailKey(), s = state[view];
  if (key === shown && !force) return;
  shown = key;
  opens++;  // an item still loading is not wanted any more
  if (view === "out-of-set" && s.oos !== undefined) return openOutOfSet(s.oos);
  if (itemQuery()) return openItem(new URLSearchParams(itemQuery()));
  $("#detail").replaceChildren(el("p", { class: "hint" }, HINT));
}

async function openItem(q) {
  const seq = ++opens, t0 = performance.now();
  document.body.dataset.drawn = "";
  $("#detail").replaceChildren(el("p", { class: "hint" }, "loading " + q.get("image") + "…"));
  let got;
  try {
    got = await getJSON("/api/item?" + q);
    if (got.picture) got.img = await picture(got.picture.url);
  } catch (err) {
    if (seq === opens) lost(err);
    return;
  }
  if (seq !== opens) return;
  item = got;
  drawItem();
  document.body.dataset.detailMs = Math.round(performance.now() - t0);
  document.body.dataset.drawn = item.image;
}

async function picture(url) {
  const img = new Image();
  img.src = url;
  return img.decode().then(() => img, () => null);
}

// a selection the study does not have (a stale link) is dropped with a note
function lost(err) {
  if (err.status !== 400 && err.status !== 404) return $("#detail").replaceChildren(el("p", { class: "hint" }, err.message));
  const s = state[view];
  warn(`ignored image=${s.image}${s.image_class ? ` (class ${s.image_class})` : ""}: ${err.message}`);
  delete s.image;
  delete s.image_class;
  push(true);
  mark();
  showDetail();
}

// --- one image's maps ----------------------------------------------------------------------------

function decode(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

function drawItem() {
  const detail = $("#detail");
  const pic = item.picture;
  const [H, W] = pic ? [pic.height, pic.width] : item.maps[0].resolution;
  const perMap = state[view].own === "1";
  const toggle = el("input", { type: "checkbox", id: "per-map" });
  toggle.checked = perMap;
  toggle.addEventListener("change", () => { state[view].own = toggle.checked ? "1" : ""; push(); shown = detailKey(); drawItem(); });
  // one colour scale per method (methods' maps have unrelated units): from min(0, lowest) to the highest
  const methods = [...new Set(item.maps.map((m) => m.method))];
  const several = methods.length > 1;
  const range = (maps) => [Math.min(0, ...maps.map((m) => m.min)), Math.max(...maps.map((m) => m.max))];
  const span = ([lo, hi]) => `${lo.toPrecision(3)} to ${hi.toPrecision(3)}`;
  const bar = el("canvas", { id: "colorbar", width: 256, height: 1 });
  paint(bar, Float32Array.from({ length: 256 }, (_, i) => i / 255), 256, 1, 0, 1, 1);
  const scale = perMap ? "each map from its own minimum to maximum"
    : several ? "shared by the maps of each method" : `shared: ${span(range(item.maps))}`;
  const top = el("div", {},
    el("h3", {}, `${item.image} · class ${className(item.class)}`),
    el("label", {}, toggle, " normalise each map on its own "), " colour scale ", bar, " ", scale);
  const first = el("div", { class: "panels" });
  const photo = el("canvas", { width: W, height: H, id: "picture" });
  const ctx = photo.getContext("2d");
  if (item.img) ctx.drawImage(item.img, 0, 0, W, H);
  if (pic) {
    ctx.strokeStyle = "lime";
    ctx.lineWidth = Math.max(1, W / 128);
    for (const [x0, y0, x1, y1] of pic.boxes) ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  first.append(el("figure", {}, photo, el("figcaption", {}, pic ? (pic.boxes.length ? "image + boxes" : "image") : item.no_picture)));
  if (pic && pic.human_map) {
    const c = el("canvas", { width: W, height: H, class: "map" });
    overlay(c, decode(pic.human_map), W, H, W, H, 0, 1);
    first.append(el("figure", {}, c, el("figcaption", {}, "human salience")));
  }
  const sections = el("div");
  for (const method of methods) {
    const maps = item.maps.filter((m) => m.method === method);
    const [lo, hi] = range(maps);
    const box = several ? el("div", { class: "method", "data-method": method }) : sections;
    if (several) box.append(el("h4", { class: "method-name" }, method + (perMap ? "" : ` · colour scale ${span([lo, hi])}`)));
    for (const g of [...new Set(maps.map((m) => m.group))]) {
      const row = el("div", { class: "panels" });
      for (const m of maps.filter((x) => x.group === g)) {
        const c = el("canvas", { width: W, height: H, class: "map", "data-model": m.model, "data-method": m.method });
        const [h, w] = m.shape;
        overlay(c, decode(m.data), w, h, W, H, perMap ? m.min : lo, perMap ? m.max : hi);
        const vals = Object.entries(m.values).filter(([, v]) => v !== null).map(([k, v]) => `${k}: ${fmt(v, true)}`).join("\n");
        row.append(el("figure", { title: vals }, c, el("figcaption", {}, m.model)));
      }
      box.append(el("div", { class: "group" }, el(several ? "h5" : "h4", {}, g), row));
    }
    if (several) sections.append(box);
  }
  detail.replaceChildren(top, first, sections);
}

// colour map a [h, w] map into `canvas` (its own size), values lo..hi -> 0..255
function paint(canvas, data, w, h, lo, hi, alpha) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const span = hi > lo ? hi - lo : 1;
  for (let i = 0; i < w * h; i++) {
    const k = Math.max(0, Math.min(255, Math.round(((data[i] - lo) / span) * 255))) || 0;  // NaN: 0
    const [r, g, b] = meta.colormap[k];
    img.data.set([r, g, b, Math.round(255 * alpha)], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
}

// the gray image under the map, the map upsampled (bilinear) to the image's resolution on top
function overlay(canvas, data, w, h, W, H, lo, hi) {
  const ctx = canvas.getContext("2d");
  if (item.img) {
    ctx.filter = "grayscale(1)";
    ctx.drawImage(item.img, 0, 0, W, H);
    ctx.filter = "none";
  }
  const small = el("canvas", { width: w, height: h });
  paint(small, data, w, h, lo, hi, 1);
  ctx.globalAlpha = item.img ? 0.65 : 1;
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, W, H);
  ctx.globalAlpha = 1;
}

function openOutOfSet(index) {
  const rec = page && records().find((r) => String(r.index) === index);
  if (!rec) {
    warn(`ignored oos=${index}: no such out-of-set image on this page`);
    delete state[view].oos;
    push(true);
    return showDetail();
  }
  const cells = Object.entries(rec).filter(([k]) => k !== "index").map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, fmt(v, true))));
  const img = el("img", { src: `/api/out-of-set.png?index=${rec.index}`, width: 160, id: "picture" });
  $("#detail").replaceChildren(
    el("h3", {}, `out-of-set image ${rec.index}`), img,
    el("p", { class: "hint" }, "Score: the probability each model gives its predicted class. The stores hold maps of the study's images only."),
    el("table", {}, ...cells));
  document.body.dataset.drawn = "oos-" + rec.index;
}

function turn(by) {
  state[view].offset = Math.max(0, (+state[view].offset || 0) + by);
  go();
}

async function main() {
  meta = await getJSON("/api/meta");
  $("#study").textContent = `${meta.study} · ${meta.rows} rows`;
  if (!meta.report) $("#report-link").remove();
  $("#prev").addEventListener("click", () => turn(-LIMIT));
  $("#next").addEventListener("click", () => turn(LIMIT));
  window.addEventListener("popstate", applyURL);
  window.addEventListener("hashchange", applyURL);
  applyURL();
}

main();
