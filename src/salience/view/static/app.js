// salience view: the table of a study's images, ranked views, and one image's maps side by side.
"use strict";

const $ = (sel) => document.querySelector(sel);
let meta = null;
let view = "table";
let state = {};      // per view: query parameters (filters, sort, desc, offset)
let item = null;     // the item shown in the detail panel
const LIMIT = 100;

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
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

function select(name, options, value, label) {
  const s = el("select", { name, id: "f-" + name });
  for (const [v, text] of options) {
    const o = el("option", { value: v }, text);
    if (v === value) o.selected = true;
    s.append(o);
  }
  s.addEventListener("change", () => { state[view][name] = s.value; state[view].offset = 0; load(); });
  return el("label", {}, label + " ", s);
}

function searchBox() {
  const i = el("input", { id: "search", type: "search", placeholder: "image path contains…", value: state[view].search || "" });
  let timer = null;
  i.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state[view].search = i.value; state[view].offset = 0; load(); }, 250);
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

function endpoint() {
  return { table: "/api/rows", disagreement: "/api/disagreement", instability: "/api/instability", "out-of-set": "/api/out-of-set" }[view];
}

async function load() {
  const t0 = performance.now();
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(state[view])) if (v !== "" && v !== undefined) params.set(k, v);
  params.set("limit", LIMIT);
  $("#note").textContent = "";
  let page;
  try {
    page = await getJSON(endpoint() + "?" + params);
  } catch (err) {
    $("#note").textContent = err.message;
    $("#grid thead").replaceChildren();
    $("#grid tbody").replaceChildren();
    $("#range").textContent = "";
    document.body.dataset.loaded = view;
    return;
  }
  render(page);
  document.body.dataset.tableMs = Math.round(performance.now() - t0);
  document.body.dataset.loaded = view;
}

function fmt(v, numeric) {
  if (v === null) return "";
  if (!numeric) return v;
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}

function render(page) {
  const s = state[view];
  const head = el("tr");
  page.columns.forEach((c) => {
    const arrow = c === page.sort ? (page.desc ? " ▼" : " ▲") : "";
    head.append(el("th", {
      class: c === page.sort ? "sorted" : "", "data-col": c,
      on: { click: () => { s.desc = c === page.sort ? (page.desc ? 0 : 1) : 0; s.sort = c; s.offset = 0; load(); } },
    }, c + arrow));
  });
  $("#grid thead").replaceChildren(head);
  const body = page.rows.map((row) => {
    const rec = Object.fromEntries(page.columns.map((c, i) => [c, row[i]]));
    const tr = el("tr", { on: { click: () => { select_row(tr); open(rec); } } });
    row.forEach((v, i) => {
      const numeric = page.numeric.includes(page.columns[i]);
      const text = page.columns[i] === "class" ? className(v) : fmt(v, numeric);
      tr.append(el("td", numeric ? { class: "num" } : {}, text));
    });
    return tr;
  });
  $("#grid tbody").replaceChildren(...body);
  const end = Math.min(page.offset + page.rows.length, page.total);
  $("#range").textContent = page.total ? `${page.offset + 1}–${end} of ${page.total}` : "no rows";
  $("#prev").disabled = page.offset === 0;
  $("#next").disabled = end >= page.total;
}

function select_row(tr) {
  document.querySelectorAll("tbody tr.selected").forEach((r) => r.classList.remove("selected"));
  tr.classList.add("selected");
}

function open(rec) {
  if (view === "out-of-set") return openOutOfSet(rec);
  const q = new URLSearchParams({ image: rec.image });
  if (rec.class !== undefined && rec.class !== "") q.set("class", rec.class);
  if (state[view].method) q.set("method", state[view].method);  // filtered to one method: its maps only
  openItem(q);
}

async function openItem(q) {
  const t0 = performance.now();
  const detail = $("#detail");
  document.body.dataset.drawn = "";
  detail.replaceChildren(el("p", { class: "hint" }, "loading " + q.get("image") + "…"));
  try {
    item = await getJSON("/api/item?" + q);
  } catch (err) {
    detail.replaceChildren(el("p", { class: "hint" }, err.message));
    return;
  }
  if (item.picture) {
    item.img = new Image();
    item.img.src = item.picture.url;
    await item.img.decode().catch(() => { item.img = null; });
  }
  drawItem();
  document.body.dataset.detailMs = Math.round(performance.now() - t0);
  document.body.dataset.drawn = item.image;
}

function decode(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

function drawItem() {
  const detail = $("#detail");
  const pic = item.picture;
  const [H, W] = pic ? [pic.height, pic.width] : item.maps[0].resolution;
  const perMap = $("#per-map") ? $("#per-map").checked : false;
  const toggle = el("input", { type: "checkbox", id: "per-map" });
  toggle.checked = perMap;
  toggle.addEventListener("change", drawItem);
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

function openOutOfSet(rec) {
  const cells = Object.entries(rec).filter(([k]) => k !== "index").map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, fmt(v, true))));
  const img = el("img", { src: `/api/out-of-set.png?index=${rec.index}`, width: 160, id: "picture" });
  $("#detail").replaceChildren(
    el("h3", {}, `out-of-set image ${rec.index}`), img,
    el("p", { class: "hint" }, "Score: the probability each model gives its predicted class. The stores hold maps of the study's images only."),
    el("table", {}, ...cells));
  document.body.dataset.drawn = "oos-" + rec.index;
}

function show(name) {
  view = ["table", "disagreement", "instability", "out-of-set"].includes(name) ? name : "table";
  state[view] = state[view] || {};
  document.querySelectorAll("nav a[data-view]").forEach((a) => a.classList.toggle("active", a.dataset.view === view));
  controls();
  load();
}

async function main() {
  meta = await getJSON("/api/meta");
  $("#study").textContent = `${meta.study} · ${meta.rows} rows`;
  if (!meta.report) $("#report-link").remove();
  $("#prev").addEventListener("click", () => { state[view].offset = Math.max(0, (state[view].offset || 0) - LIMIT); load(); });
  $("#next").addEventListener("click", () => { state[view].offset = (state[view].offset || 0) + LIMIT; load(); });
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  show(location.hash.slice(1));
}

main();
