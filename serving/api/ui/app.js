// The web UI: plain DOM and fetch against the same origin's API. No framework, no CDN. This file holds
// the shared helpers, the tabs and the request panels; views.js the evidence views (overview first).
"use strict";

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const num = (v, d = 4) => (v === null || v === undefined ? "—" : Number(v).toFixed(d));
$("apikey").value = localStorage.getItem("apikey") || "";
$("apikey").addEventListener("change", () => localStorage.setItem("apikey", $("apikey").value));

function params() {
  return { symbol: $("symbol").value.trim(), timeframe: $("timeframe").value, exchange: "binance" };
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, options = {}) {
  const headers = { "content-type": "application/json" };
  if ($("apikey").value) headers["X-API-Key"] = $("apikey").value;
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

async function run(fn) {
  showError("");
  try { await fn(); } catch (err) { showError(err.message); }
}

function sourcePill(source) {
  return source === "simulated" ? '<span class="pill sim">SIMULATED</span>' : `<span class="pill">${esc(source)}</span>`;
}

function kv(pairs) {
  return '<div class="kv">' + pairs.map(([k, v]) => `<div>${esc(k)}</div><div>${v}</div>`).join("") + "</div>";
}

async function signal() {
  const body = await api("/v1/crypto/signal", { method: "POST", body: JSON.stringify({
    ...params(), horizon_min: Number($("horizon").value), explain: $("explain").checked }) });
  let html = kv([
    ["symbol", `${esc(body.symbol)} ${sourcePill(body.source)}`],
    ["bar", esc(body.timestamp)],
    ["risk score", `<span class="pill ${body.risk_score > 0.66 ? "high" : body.risk_score > 0.33 ? "medium" : "low"}">${num(body.risk_score, 3)}</span>`],
    ["vol regime", `<span class="pill ${esc(body.vol_regime)}">${esc(body.vol_regime)}</span>`],
    ["nowcast return", `${num(body.nowcast_ret * 100, 4)} % over ${body.horizon_min} min`],
  ]);
  if (body.explain) {
    html += `<p class="note">vol24 ${num(body.explain.vol, 5)}; calm below ${num(body.explain.calm_below, 4)}, turbulent from ${num(body.explain.turbulent_from, 4)}</p>`;
    html += table(body.explain.features_tail, ["time", "close", "ret", "vol24", "sma12", "sma48"]);
  }
  $("signal-out").innerHTML = html;
}

function table(rows, columns) {
  const head = "<tr>" + columns.map((c) => `<th>${esc(c)}</th>`).join("") + "</tr>";
  const body = rows.map((r) => "<tr>" + columns.map((c) => {
    const v = c.split(".").reduce((o, k) => (o == null ? o : o[k]), r);
    return `<td>${typeof v === "number" ? num(v, 5) : esc(v ?? "—")}</td>`;
  }).join("") + "</tr>").join("");
  return `<table>${head}${body}</table>`;
}

function mlPairs(ml) {
  return [
    ["forecast vol (next 24 bars)", num(ml.predicted_volatility, 5)],
    ["current vol (last 24 bars)", num(ml.current_volatility, 5)],
    ["regime", `<span class="pill ${esc(ml.volatility_regime)}">${esc(ml.volatility_regime)}</span>`],
    ["risk level", `<span class="pill ${esc(ml.risk_level)}">${esc(ml.risk_level)}</span>`],
    ["confidence", num(ml.confidence, 3)],
    ["bar", esc(ml.bar_timestamp)],
  ];
}

async function mlSignal() {
  const body = await api("/v1/crypto/ml-signal", { method: "POST", body: JSON.stringify({ ...params(), include_heuristic: false }) });
  $("ml-out").innerHTML = kv([["symbol", `${esc(body.symbol)} ${sourcePill(body.source)}`],
    ["model version", esc(body.model_version)], ...mlPairs(body.ml_prediction)]);
}

async function explain() {
  const body = await api("/v1/crypto/ml-explain", { method: "POST", body: JSON.stringify(params()) });
  $("ml-out").innerHTML = `<p class="note">Occlusion (reference: ${esc(body.reference)}), forecast ${num(body.predicted_volatility, 5)} ${sourcePill(body.source)}</p>`
    + table(body.attributions, ["feature", "attribution", "relative", "last_value", "reference_value"]);
}

async function modelInfo() {
  const info = await api("/v1/ml/model/info");
  $("model-info").innerHTML = kv([
    ["loaded", info.model_loaded ? '<span class="pill ok">yes</span>' : '<span class="pill bad">no</span>'],
    ["model", `${esc(info.model_name)}@${esc(info.alias)} v${esc(info.model_version ?? "—")}`],
    ["family", esc(info.model_family ?? "—")], ["loaded at", esc(info.load_time ?? "—")],
    ["note", esc(info.last_error ?? "")],
  ]);
}

async function reload() {
  const body = await api("/v1/ml/model/reload", { method: "POST" });
  $("ml-out").innerHTML = kv([["success", String(body.success)], ["old", esc(body.old_version)],
    ["new", esc(body.new_version)], ["message", esc(body.message)]]);
  await modelInfo();
}

async function compare() {
  const q = new URLSearchParams(params());
  const body = await api(`/v1/crypto/signals/compare?${q}`);
  const h = body.heuristic;
  let html = `<p>${esc(body.symbol)} at ${esc(body.timestamp)} ${sourcePill(body.source)}</p>`;
  html += "<h3>Heuristic</h3>" + kv([["risk score", num(h.risk_score, 3)],
    ["vol regime", `<span class="pill ${esc(h.vol_regime)}">${esc(h.vol_regime)}</span>`]]);
  html += "<h3>ML</h3>" + (body.ml ? kv(mlPairs(body.ml)) : `<p class="note">unavailable: ${esc(body.ml_error)}</p>`);
  if (body.regimes_agree !== undefined && body.regimes_agree !== null) html += `<p>regimes agree: ${body.regimes_agree}</p>`;
  $("compare-out").innerHTML = html;
}

async function chart() {
  const p = params(), n = Math.min(768, Math.max(48, Number($("limit").value) || 240));
  const q = new URLSearchParams({ ...p, limit: n });
  const ohlcv = await api(`/v1/crypto/ohlcv?${q}`);
  const fq = new URLSearchParams({ ...p, n });
  const feats = await api(`/v1/crypto/features?${fq}`);
  let forecast = null, note = "";
  try {
    const ml = await api("/v1/crypto/ml-signal", { method: "POST", body: JSON.stringify({ ...p, include_heuristic: false }) });
    const last = ohlcv.data[ohlcv.data.length - 1];
    forecast = { ts: last.ts + 24 * 3600e3, value: ml.ml_prediction.predicted_volatility };
  } catch (err) { note = ` — no forecast (${err.message})`; }
  drawRiskChart($("chart"), ohlcv.data, feats.rows, forecast);
  $("chart").dataset.drawn = String(ohlcv.rows);
  $("chart-note").innerHTML = `${esc(ohlcv.symbol)} ${esc(ohlcv.timeframe)}, ${ohlcv.rows} closed bars ${sourcePill(ohlcv.source)}${esc(note)}`;
}

async function historyTables() {
  // The tails are bare lists, newest last (the seed's shape); the tables show the newest on top.
  const s = await api("/v1/crypto/signals/tail?n=20");
  $("hist-signals").innerHTML = table(s.slice().reverse(), ["timestamp", "symbol", "risk_score", "vol_regime", "horizon_min", "source"]);
  const m = await api("/v1/crypto/ml-predictions/tail?n=20");
  $("hist-ml").innerHTML = table(m.slice().reverse(), ["ml_prediction.bar_timestamp", "symbol", "model_version",
    "ml_prediction.predicted_volatility", "ml_prediction.volatility_regime", "source"]);
}

async function status() {
  // /ready tells anonymous callers only ready or not; the served version comes from the model info
  // (a /v1 read: it sends the API key when one is entered).
  const r = await fetch("/ready");
  let label = "heuristic only (no model)";
  if (r.ok) {
    const headers = $("apikey").value ? { "X-API-Key": $("apikey").value } : {};
    const info = await fetch("/v1/ml/model/info", { headers });
    label = info.ok ? `model v${(await info.json()).model_version}` : "model loaded";
  }
  $("status").textContent = label;
  $("status").className = "pill " + (r.ok ? "ok" : "bad");
}

// Tabs: an ARIA tablist (arrow keys / Home / End move between tabs), each view addressable as
// #/<tab> (the symbol view as #/symbol/<symbol>), so back/forward and links work.
const tabHooks = {};  // tab name → run each time that tab is shown (views.js adds the evidence views)
const tabButtons = () => Array.from(document.querySelectorAll("[role=tab]"));

function showTab(name, { focus = false, updateHash = true } = {}) {
  if (!document.getElementById(`tab-${name}`)) name = "overview";
  tabButtons().forEach((b) => {
    const on = b.dataset.tab === name;
    b.classList.toggle("active", on);
    b.setAttribute("aria-selected", String(on));
    b.tabIndex = on ? 0 : -1;
    if (on && focus) b.focus();
  });
  document.querySelectorAll("main section[role=tabpanel]").forEach((s) => { s.hidden = s.id !== `tab-${name}`; });
  if (updateHash) {
    const hash = name === "symbol" ? `#/symbol/${encodeURIComponent($("symbol").value.trim())}` : `#/${name}`;
    if (location.hash !== hash) window.history.replaceState(null, "", hash);
  }
  if (name === "ml") run(modelInfo);
  if (name === "history") run(historyTables);
  if (tabHooks[name]) run(tabHooks[name]);
}

function route() {
  const [, name, arg] = location.hash.match(/^#\/([a-z]+)(?:\/(.+))?$/) || [];
  if (name === "symbol" && arg) $("symbol").value = decodeURIComponent(arg);
  showTab(name || "overview", { updateHash: false });
}

tabButtons().forEach((b) => {
  b.addEventListener("click", () => showTab(b.dataset.tab));
  b.addEventListener("keydown", (e) => {
    const all = tabButtons(), i = all.indexOf(b);
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: all.length - 1 }[e.key];
    if (next === undefined) return;
    e.preventDefault();
    showTab(all[(next + all.length) % all.length].dataset.tab, { focus: true });
  });
});
window.addEventListener("hashchange", route);
$("run-signal").addEventListener("click", () => run(signal));
$("run-ml").addEventListener("click", () => run(mlSignal));
$("run-explain").addEventListener("click", () => run(explain));
$("run-reload").addEventListener("click", () => run(reload));
$("run-compare").addEventListener("click", () => run(compare));
$("run-ohlcv").addEventListener("click", () => run(chart));
$("run-history").addEventListener("click", () => run(historyTables));
status();
