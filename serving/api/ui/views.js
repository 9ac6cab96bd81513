// The evidence views: overview (the landing page), symbol, model, reports. They read the read-only
// /v1/evidence endpoints; anything missing (no model, no served forecasts, no drift artifact, no
// reports) is shown as an explained empty state, never as an error.
"use strict";

const pctv = (v, d = 2) => (v === null || v === undefined ? "—" : `${(v * 100).toFixed(d)} %`);
const signed = (v) => (v === null || v === undefined ? "—" : `${v >= 0 ? "+" : "−"}${Math.abs(v * 100).toFixed(2)} %`);
const price = (v) => (v === null || v === undefined ? "—" : Number(v).toLocaleString("en-US", { maximumSignificantDigits: 7 }));
const empty = (text) => `<p class="empty">${esc(text)}</p>`;
const pill = (cls, text) => `<span class="pill ${esc(cls)}">${esc(text)}</span>`;

function ageText(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

// --- overview ------------------------------------------------------------------------------------

let overviewTimer = null;

function openSymbol(symbol) {
  $("symbol").value = symbol;
  showTab("symbol");
}

function overviewRow(r) {
  const link = `<a href="#/symbol/${encodeURIComponent(r.symbol)}" class="symbol-link">${esc(r.symbol)}</a>`;
  if (r.error) {
    return `<tr data-symbol="${esc(r.symbol)}"><th scope="row">${link}</th><td colspan="8" class="bad-text">unavailable: ${esc(r.error)}</td></tr>`;
  }
  const f = r.forecast;
  const why = (r.forecast_note || "").startsWith("no model") ? "no model loaded" : "unavailable";
  let forecast = `<span class="muted" title="${esc(r.forecast_note || "")}">—</span><div class="sub">${why}</div>`;
  if (f) {
    const band = f.interval ? `<div class="sub">${pctv(f.interval.lower)} – ${pctv(f.interval.upper)}${f.interval.level ? ` (${Math.round(f.interval.level * 100)} %)` : ""}</div>` : `<div class="sub">no interval from v${esc(f.model_version)}</div>`;
    forecast = `<span class="num">${pctv(f.predicted_volatility)}</span>${band}`;
  }
  const badges = [
    r.vol_regime ? pill(r.vol_regime, r.vol_regime) : "",
    f ? pill(f.risk_level, `risk ${f.risk_level}`) : (r.risk_score !== null ? pill(r.risk_score > 0.66 ? "high" : r.risk_score > 0.33 ? "medium" : "low", `risk ${num(r.risk_score, 2)}`) : ""),
  ].join("");
  const change = r.change_24h === null ? "—" : `<span class="${r.change_24h >= 0 ? "up-text" : "down-text"}">${signed(r.change_24h)}</span>`;
  const fresh = `${r.stale ? pill("bad", "stale") : ""}<span title="newest bar ${esc(r.last_bar_time)} (${esc(r.origin)})">${ageText(r.age_s)} ago</span>`;
  return `<tr data-symbol="${esc(r.symbol)}" class="clickable">
    <th scope="row">${link}</th><td class="num">${price(r.price)}</td><td class="num">${change}</td>
    <td class="num">${pctv(r.realized_vol_24)}</td><td>${forecast}</td><td>${badges}</td>
    <td class="wide spark-cell"></td><td>${sourcePill(r.source)}</td><td>${fresh}</td></tr>`;
}

async function overview() {
  const body = await api("/v1/evidence/overview");
  const tbody = $("overview-rows");
  tbody.innerHTML = body.rows.map(overviewRow).join("");
  body.rows.forEach((r, i) => {
    const cell = tbody.rows[i].querySelector(".spark-cell");
    if (cell) cell.appendChild(sparkline(r.sparkline, `${r.symbol}: last ${r.sparkline_bars} closes`));
  });
  tbody.querySelectorAll("tr.clickable").forEach((tr) => tr.addEventListener("click", (e) => {
    if (e.target.closest("a")) return;  // the link navigates by itself
    openSymbol(tr.dataset.symbol);
  }));
  const model = body.model_version ? `champion v${esc(body.model_version)}` : `no model (${esc(body.model_note || "")})`;
  $("overview-meta").innerHTML = `${body.rows.length} symbols · ${esc(body.timeframe)} bars · ${model} · updated ${esc(body.generated_at.slice(11, 19))} UTC`;
  $("overview-table").dataset.loaded = String(body.rows.length);
  clearTimeout(overviewTimer);
  overviewTimer = setTimeout(() => { if (!$("tab-overview").hidden) run(overview); }, (body.poll_s || 15) * 1000);
}

// --- symbol --------------------------------------------------------------------------------------

function trackRecordHtml(t) {
  if (!t.matched) return empty(`Live track record: ${t.note || "no matched forecasts"}${t.pending ? ` (${t.pending} waiting for their 24 bars)` : ""}.`);
  const rows = Object.entries(t.baseline_qlike).map(([name, q]) => `<tr><th scope="row">${esc(name)}${name === t.best_baseline ? " (best)" : ""}</th><td class="num">${num(q, 4)}</td></tr>`).join("");
  const better = t.champion_qlike < t.baseline_qlike[t.best_baseline];
  return `<h3>Live track record</h3>
    <p>${t.matched} served forecasts have their 24 bars closed (${t.pending} pending). Mean QLIKE (lower is better):
    champion <strong>${num(t.champion_qlike, 4)}</strong> ${better ? pill("ok", "beats") : pill("bad", "does not beat")} the best persistence baseline, ${esc(t.best_baseline)}.</p>
    <table class="compact"><caption class="sr-only">QLIKE of the persistence baselines on the same forecasts</caption><thead><tr><th scope="col">baseline</th><th scope="col">QLIKE</th></tr></thead><tbody>${rows}</tbody></table>
    ${(t.interval_coverage || []).map((c) => `<p class="coverage">${c.level === null ? "Intervals" : `${Math.round(c.level * 100)} % intervals`}: the realized volatility fell inside <strong>${c.inside} of ${c.n}</strong> (${num(100 * c.inside / c.n, 1)} %).</p>`).join("")}
    ${t.note ? `<p class="note">${esc(t.note)}</p>` : ""}`;
}

async function symbolView() {
  const n = Math.min(1440, Math.max(48, Number($("series-bars").value) || 336));
  const q = new URLSearchParams({ symbol: $("symbol").value.trim(), timeframe: $("timeframe").value, bars: n });
  const s = await api(`/v1/evidence/symbol?${q}`);
  $("series-title").innerHTML = `${esc(s.symbol)} · ${esc(s.timeframe)} ${sourcePill(s.source)}`;
  $("series-note").textContent = s.note || `${s.forecasts.length} served forecasts over these ${s.bars.length} bars (bars from the ${s.origin}).`;
  const charts = $("series-charts");
  charts.replaceChildren();
  charts.appendChild(priceChart(s));
  charts.appendChild(volatilityChart(s));
  if (s.track_record.rolling.length > 1) charts.appendChild(qlikeChart(s.track_record, s.symbol));
  charts.dataset.forecasts = String(s.forecasts.length);
  $("series-record").innerHTML = trackRecordHtml(s.track_record);
  $("series-table").innerHTML = s.forecasts.length ? `<table><thead><tr><th scope="col">made at (bar)</th><th scope="col">model</th><th scope="col">forecast</th><th scope="col">interval</th><th scope="col">realized after</th><th scope="col">QLIKE</th><th scope="col">served</th></tr></thead><tbody>${
    s.forecasts.slice().reverse().map((f) => `<tr><td>${esc(new Date(f.made_at_ts).toISOString().slice(0, 16))}Z</td><td>v${esc(f.model_version)}</td><td class="num">${pctv(f.predicted_volatility)}</td><td>${f.interval ? `${pctv(f.interval.lower)} – ${pctv(f.interval.upper)}` : "—"}</td><td class="num">${f.realized_volatility === null ? "pending" : pctv(f.realized_volatility)}</td><td class="num">${num(f.qlike, 4)}</td><td>${f.times_served}×</td></tr>`).join("")
  }</tbody></table>` : empty("No forecasts were served at these bars.");
}

// --- model ---------------------------------------------------------------------------------------

function versionCard(title, v, servedVersion) {
  if (!v) return `<div class="card"><h3>${esc(title)}</h3>${empty(`No ${title.toLowerCase()} alias in the registry.`)}</div>`;
  const link = v.run_url ? `<a href="${esc(v.run_url)}" target="_blank" rel="noopener">MLflow run ${esc(v.run_id.slice(0, 8))}…</a>` : esc(v.run_id || "—");
  return `<div class="card"><h3>${esc(title)}: v${esc(v.version)} ${v.version === servedVersion ? pill("ok", "served") : ""}</h3>${kv([
    ["family", esc(v.family || "—")], ["registered", esc(v.created || "—")],
    ["data window", esc(v.data_window || "—")], ["symbols", esc(v.symbols || "—")],
    ["timeframe", esc(v.timeframe || "—")], ["aliases", esc(v.aliases.join(", ") || "—")], ["run", link],
  ])}</div>`;
}

function evaluationHtml(e) {
  if (!e) return empty("No evaluation: there is no champion to describe.");
  let html = `<h3>Evaluation on the training run's holdout</h3>`;
  if (e.rows.length) {
    const cols = [["name", "forecaster"], ["kind", "kind"], ["qlike", "QLIKE"], ["rmse_vol", "RMSE (vol)"], ["mz_r2", "MZ R²"], ["dm_stat", `DM vs ${e.best_baseline || "—"}`], ["dm_pvalue", "p"], ["n", "n"]];
    html += `<table id="evaluation-table"><caption class="sr-only">Every forecaster scored on the same holdout, best first</caption><thead><tr>${cols.map(([, h]) => `<th scope="col">${esc(h)}</th>`).join("")}</tr></thead><tbody>${
      e.rows.map((r) => `<tr class="${r.name === e.best_baseline ? "best-baseline" : ""}">${cols.map(([k]) => `<td${typeof r[k] === "number" ? ' class="num"' : ""}>${typeof r[k] === "number" && k !== "n" ? num(r[k], 4) : esc(r[k] ?? "—")}</td>`).join("")}</tr>`).join("")
    }</tbody></table><p class="note">Primary metric ${esc(e.primary || "—")}; best baseline ${esc(e.best_baseline || "—")} (from ${esc(e.source)}).</p>`;
  } else {
    html += empty(e.note || "No evaluation table.");
  }
  const metrics = Object.entries(e.metrics || {});
  if (metrics.length) html += `<details><summary>Run metrics (${metrics.length})</summary>${kv(metrics.map(([k, v]) => [k, num(v, 5)]))}</details>`;
  return html;
}

function promotionsHtml(list) {
  if (!list.length) return empty("No registered versions yet.");
  return `<h3>Promotion history</h3><div class="scroll"><table id="promotions-table"><thead><tr><th scope="col">version</th><th scope="col">family</th><th scope="col">decision</th><th scope="col">reason</th><th scope="col">challenger QLIKE</th><th scope="col">champion QLIKE</th><th scope="col">decided</th></tr></thead><tbody>${
    list.map((p) => `<tr><td>v${esc(p.version)}</td><td>${esc(p.family || "—")}</td><td>${p.decision ? pill(p.decision === "promoted" ? "ok" : "bad", p.decision) : '<span class="muted">none recorded</span>'}</td><td class="reason">${esc(p.reason || "—")}</td><td class="num">${num(p.challenger_qlike, 4)}</td><td class="num">${num(p.champion_qlike, 4)}</td><td>${esc(p.decided_at || p.created || "—")}</td></tr>`).join("")
  }</tbody></table></div>`;
}

function driftHtml(d, note) {
  if (!d) return `<h3>Drift</h3>${empty(note || "No drift status.")}`;
  const flag = (v) => (v === null ? "unknown" : v ? "detected" : "none");
  return `<h3>Drift (${esc(d.current_window || "?")}, against champion v${esc(d.champion_version || "?")})</h3>
    <p>Feature drift: ${pill(d.feature_drift_detected ? "bad" : "ok", flag(d.feature_drift_detected))} · label drift: ${pill(d.label_drift_detected ? "bad" : "ok", flag(d.label_drift_detected))} <span class="note">(${esc(d.key)})</span></p>
    <div class="scroll"><table><thead><tr><th scope="col">feature</th><th scope="col">KS</th><th scope="col">p (adjusted)</th><th scope="col">PSI</th><th scope="col">drifted</th></tr></thead><tbody>${
      d.features.map((f) => `<tr><td>${esc(f.feature)}${f.is_label ? " (label)" : ""}</td><td class="num">${num(f.ks_statistic, 3)}</td><td class="num">${num(f.p_value_adjusted, 3)}</td><td class="num">${num(f.psi, 3)}</td><td>${f.drifted === null ? "—" : f.drifted ? pill("bad", "yes") : "no"}</td></tr>`).join("")
    }</tbody></table></div>`;
}

async function modelView() {
  const m = await api("/v1/evidence/model");
  let html = `<p class="note">${esc(m.model_name)} at ${esc(m.tracking_uri)} · serving ${m.served_version ? `v${esc(m.served_version)}` : "no model"} · as of ${esc(m.generated_at.slice(11, 19))} UTC</p>`;
  if (m.registry_error) html += `<p class="empty">${esc(m.registry_error)}</p>`;
  html += `<div class="cards">${versionCard("Champion", m.champion, m.served_version)}${versionCard("Challenger", m.challenger, m.served_version)}</div>`;
  html += `<div class="card">${evaluationHtml(m.evaluation)}</div>`;
  html += `<div class="card">${promotionsHtml(m.promotions)}</div>`;
  html += `<div class="card">${driftHtml(m.drift, m.drift_note)}</div>`;
  $("model-out").innerHTML = html;
}

// --- reports -------------------------------------------------------------------------------------

async function showDailyReport(day) {
  const r = await api(`/v1/evidence/reports/daily/${encodeURIComponent(day)}`);
  const box = $("report-text");
  box.textContent = r.markdown;
  box.hidden = false;
  box.setAttribute("aria-label", `daily report ${day}`);
  box.focus();
}

async function reportsView() {
  const r = await api("/v1/evidence/reports");
  let html = `<div class="card"><h3>Daily reports</h3>`;
  html += r.daily.length ? `<ul class="days">${r.daily.map((d) => `<li><button class="link" data-day="${esc(d.day)}">${esc(d.day)}</button></li>`).join("")}</ul>` : empty(r.note || "No daily reports.");
  html += `</div><div class="card"><h3>Latest quality report per symbol</h3><div class="scroll"><table id="quality-table"><thead><tr><th scope="col">symbol</th><th scope="col">day</th><th scope="col">status</th><th scope="col">bars</th><th scope="col">missing</th><th scope="col">failed / warnings</th></tr></thead><tbody>${
    r.quality.map((q) => q.day === null
      ? `<tr><td>${esc(q.symbol)}</td><td colspan="5" class="muted">${esc(q.note || "no report")}</td></tr>`
      : `<tr><td>${esc(q.symbol)}</td><td>${esc(q.day)}</td><td>${pill(q.status === "OK" ? "ok" : q.status === "WARN" ? "medium" : "bad", q.status || "?")}</td><td class="num">${q.rows ?? "—"} / ${q.expected_rows ?? "—"}</td><td class="num">${q.missing_bars ?? "—"}</td><td>${esc([...q.failed_checks, ...q.warnings].join(", ") || "none")}${q.markdown ? `<details><summary>report</summary><pre class="report">${esc(q.markdown)}</pre></details>` : ""}</td></tr>`).join("")
  }</tbody></table></div></div>`;
  $("reports-out").innerHTML = html;
  $("reports-out").querySelectorAll("button[data-day]").forEach((b) => b.addEventListener("click", () => run(() => showDailyReport(b.dataset.day))));
}

tabHooks.overview = overview;
tabHooks.symbol = symbolView;
tabHooks.model = modelView;
tabHooks.reports = reportsView;
$("run-series").addEventListener("click", () => run(symbolView));
route();
