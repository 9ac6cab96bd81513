// Hand-drawn SVG charts for the overview and symbol views: no library, no CDN. Each chart is an <svg>
// with a viewBox (it scales with its container), role="img" and a <title>, and every mark carries a
// class (price-line, volume-bar, realized-line, forecast-point, forecast-made, interval-band,
// regime-span, qlike-champion, qlike-baseline) so tests and styles can find it.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs = {}, parent = null) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (parent) parent.appendChild(el);
  return el;
}

function svgRoot(width, height, label) {
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "chart" });
  svgEl("title", {}, svg).textContent = label;
  return svg;
}

function extent(values, pad = 0.05) {
  const finite = values.filter((v) => v !== null && v !== undefined && Number.isFinite(v));
  if (!finite.length) return [0, 1];
  let lo = Math.min(...finite), hi = Math.max(...finite);
  if (hi === lo) { hi += Math.abs(hi) * 0.01 || 1e-9; lo -= Math.abs(lo) * 0.01 || 1e-9; }
  const span = hi - lo;
  return [lo - span * pad, hi + span * pad];
}

function scale(d0, d1, r0, r1) {
  return (v) => r0 + (r1 - r0) * (v - d0) / ((d1 - d0) || 1);
}

function pathOf(points) {
  // Breaks the line at nulls (a hole in the bars is drawn as a hole).
  let d = "", pen = false;
  for (const [x, y] of points) {
    if (y === null || !Number.isFinite(y)) { pen = false; continue; }
    d += `${pen ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
    pen = true;
  }
  return d;
}

// A sparkline of closes, coloured by the direction over its span.
function sparkline(values, label) {
  const W = 120, H = 32;
  const svg = svgRoot(W, H, label);
  svg.classList.add("sparkline");
  if (values.length < 2) return svg;
  const [lo, hi] = extent(values, 0.02);
  const x = scale(0, values.length - 1, 1, W - 1), y = scale(lo, hi, H - 2, 2);
  const up = values[values.length - 1] >= values[0];
  svgEl("path", { d: pathOf(values.map((v, i) => [x(i), y(v)])), class: `spark-line ${up ? "up" : "down"}` }, svg);
  return svg;
}

const DAY_MS = 86400e3;

function timeAxis(svg, x, t0, t1, top, bottom) {
  const span = t1 - t0;
  const step = span > 20 * DAY_MS ? 7 * DAY_MS : span > 6 * DAY_MS ? 2 * DAY_MS : DAY_MS;
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
    svgEl("line", { x1: x(t), x2: x(t), y1: top, y2: bottom, class: "grid" }, svg);
    const anchor = x(t) > x(t1) - 24 ? "end" : "middle";  // the last label stays inside the chart
    const label = svgEl("text", { x: x(t), y: bottom + 14, class: "tick", "text-anchor": anchor }, svg);
    label.textContent = new Date(t).toISOString().slice(5, 10);
  }
}

function valueAxis(svg, y, lo, hi, left, right, fmt) {
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4;
    svgEl("line", { x1: left, x2: right, y1: y(v), y2: y(v), class: "grid" }, svg);
    const label = svgEl("text", { x: left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, svg);
    label.textContent = fmt(v);
  }
}

function panelLabel(svg, text, x, y) {
  svgEl("text", { x, y, class: "panel-label" }, svg).textContent = text;
}

function regimeShading(svg, regimes, x, top, bottom, barMs) {
  for (const r of regimes) {
    svgEl("rect", {
      x: x(r.start_ts), y: top, width: Math.max(1, x(r.end_ts + barMs) - x(r.start_ts)), height: bottom - top,
      class: `regime-span regime-${r.regime}`,
    }, svg).appendChild(document.createElementNS(SVG_NS, "title")).textContent = `${r.regime} (heuristic vol24)`;
  }
}

const pct = (v, d = 2) => `${(v * 100).toFixed(d)} %`;

// Price (close) with volume bars below it, regime spans shaded behind.
function priceChart(series) {
  const W = 1000, H = 312, L = 78, R = 12, T = 26, B = 24, volTop = 222;
  const svg = svgRoot(W, H, `${series.symbol} close price and volume, ${series.bars.length} ${series.timeframe} bars`);
  const bars = series.bars, barMs = bars.length > 1 ? bars[1].ts - bars[0].ts : 3600e3;
  const t0 = bars[0].ts, t1 = bars[bars.length - 1].ts + barMs;
  const x = scale(t0, t1, L, W - R);
  regimeShading(svg, series.regimes, x, T, H - B, barMs);
  const [lo, hi] = extent(bars.map((b) => b.close));
  const y = scale(lo, hi, volTop - 10, T);
  valueAxis(svg, y, lo, hi, L, W - R, (v) => v.toPrecision(6));
  timeAxis(svg, x, t0, t1, T, H - B);
  const vmax = Math.max(...bars.map((b) => b.volume), 1e-12);
  const vy = scale(0, vmax, H - B, volTop);
  const bw = Math.max(1, (W - L - R) / bars.length - 0.5);
  for (const b of bars) {
    svgEl("rect", { x: x(b.ts), y: vy(b.volume), width: bw, height: H - B - vy(b.volume), class: "volume-bar" }, svg);
  }
  svgEl("path", { d: pathOf(bars.map((b) => [x(b.ts + barMs / 2), y(b.close)])), class: "price-line" }, svg);
  panelLabel(svg, "close (quote currency) · volume (base asset) below · shading: heuristic regime", L, T - 10);
  return svg;
}

// Realized volatility of the last 24 bars, and every served forecast drawn from the bar it was made at
// to the end of the 24 bars it covers; the dot at the end sits where the realized line answers it.
function volatilityChart(series) {
  const W = 1000, H = 332, L = 78, R = 12, T = 26, B = 24;
  const bars = series.bars, barMs = bars.length > 1 ? bars[1].ts - bars[0].ts : 3600e3;
  const fc = series.forecasts;
  const svg = svgRoot(W, H, `${series.symbol} realized volatility with ${fc.length} served forecasts`);
  const t0 = bars[0].ts;
  const t1 = Math.max(bars[bars.length - 1].ts, ...fc.map((f) => f.target_ts)) + barMs;
  const x = scale(t0, t1, L, W - R);
  regimeShading(svg, series.regimes, x, T, H - B, barMs);
  const values = [...bars.map((b) => b.realized_vol_24), ...fc.map((f) => f.predicted_volatility)];
  for (const f of fc) if (f.interval) values.push(f.interval.lower, f.interval.upper);
  const [lo0, hi] = extent(values);
  const lo = Math.max(0, lo0);
  const y = scale(lo, hi, H - B, T);
  valueAxis(svg, y, lo, hi, L, W - R, (v) => pct(v));
  timeAxis(svg, x, t0, t1, T, H - B);
  for (const [level, name] of [[series.calm_below, "calm below"], [series.turbulent_from, "turbulent from"]]) {
    if (level >= lo && level <= hi) {
      svgEl("line", { x1: L, x2: W - R, y1: y(level), y2: y(level), class: "threshold" }, svg);
      svgEl("text", { x: W - R - 4, y: y(level) - 4, class: "tick", "text-anchor": "end" }, svg).textContent = `${name} ${pct(level)}`;
    }
  }
  const banded = fc.filter((f) => f.interval).sort((a, b) => a.target_ts - b.target_ts);
  if (banded.length > 1) {
    const upper = banded.map((f) => `${x(f.target_ts).toFixed(1)},${y(f.interval.upper).toFixed(1)}`);
    const lower = banded.slice().reverse().map((f) => `${x(f.target_ts).toFixed(1)},${y(f.interval.lower).toFixed(1)}`);
    svgEl("polygon", { points: [...upper, ...lower].join(" "), class: "interval-band" }, svg);
  }
  for (const f of banded) {
    svgEl("line", { x1: x(f.target_ts), x2: x(f.target_ts), y1: y(f.interval.lower), y2: y(f.interval.upper), class: "interval-whisker" }, svg);
  }
  svgEl("path", { d: pathOf(bars.map((b) => [x(b.ts + barMs), b.realized_vol_24 === null ? null : y(b.realized_vol_24)])), class: "realized-line" }, svg);
  for (const f of fc) {
    svgEl("line", { x1: x(f.made_at_ts + barMs), x2: x(f.target_ts + barMs), y1: y(f.predicted_volatility), y2: y(f.predicted_volatility), class: "forecast-made" }, svg);
    const dot = svgEl("circle", { cx: x(f.target_ts + barMs), cy: y(f.predicted_volatility), r: 4, class: "forecast-point" + (f.realized_volatility === null ? " pending" : "") }, svg);
    const realized = f.realized_volatility === null ? "bars not closed yet" : pct(f.realized_volatility);
    svgEl("title", {}, dot).textContent = `made ${new Date(f.made_at_ts).toISOString().slice(0, 16)}Z by v${f.model_version}: forecast ${pct(f.predicted_volatility)}, realized ${realized}`;
  }
  panelLabel(svg, "realized vol of the last 24 bars (line) · served forecasts: made → end of their 24 bars (dot) · band: interval", L, T - 10);
  return svg;
}

// Rolling mean QLIKE of the champion's matched forecasts against the best persistence baseline.
function qlikeChart(record, symbol) {
  const W = 1000, H = 212, L = 78, R = 12, T = 26, B = 24;
  const svg = svgRoot(W, H, `${symbol} rolling QLIKE of the champion against the ${record.best_baseline} baseline`);
  const pts = record.rolling;
  const t0 = pts[0].target_ts, t1 = pts[pts.length - 1].target_ts + 3600e3;
  const x = scale(t0, t1, L, W - R);
  const [lo, hi] = extent([...pts.map((p) => p.champion), ...pts.map((p) => p.baseline)]);
  const y = scale(lo, hi, H - B, T);
  valueAxis(svg, y, lo, hi, L, W - R, (v) => v.toFixed(3));
  timeAxis(svg, x, t0, t1, T, H - B);
  svgEl("path", { d: pathOf(pts.map((p) => [x(p.target_ts), y(p.baseline)])), class: "qlike-baseline" }, svg);
  svgEl("path", { d: pathOf(pts.map((p) => [x(p.target_ts), y(p.champion)])), class: "qlike-champion" }, svg);
  panelLabel(svg, `rolling mean QLIKE over ${record.window} forecasts (lower is better): champion (solid) vs ${record.best_baseline} (dashed)`, L, T - 10);
  return svg;
}
