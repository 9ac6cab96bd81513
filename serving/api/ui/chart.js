// A small canvas chart: closing price on top, realized and forecast volatility below. No dependencies.
"use strict";

function drawRiskChart(canvas, bars, vols, forecast) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, padL = 70, padR = 20, split = Math.round(H * 0.6);
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px sans-serif";
  if (!bars.length) { ctx.fillStyle = "#8a96a3"; ctx.fillText("no bars", padL, 30); return; }
  const t0 = bars[0].ts, t1 = bars[bars.length - 1].ts + (forecast ? 24 * 3600e3 : 0);
  const x = (t) => padL + (W - padL - padR) * (t - t0) / Math.max(1, t1 - t0);

  function panel(top, bottom, series, colors, label, fmt) {
    const values = series.flat().map((p) => p[1]).filter((v) => v !== null && isFinite(v));
    if (!values.length) return;
    let lo = Math.min(...values), hi = Math.max(...values);
    if (hi === lo) { hi += 1e-9; lo -= 1e-9; }
    const y = (v) => bottom - (bottom - top) * (v - lo) / (hi - lo);
    ctx.strokeStyle = "#2c3642"; ctx.fillStyle = "#8a96a3";
    for (let i = 0; i <= 4; i++) {
      const v = lo + (hi - lo) * i / 4, yy = y(v);
      ctx.beginPath(); ctx.moveTo(padL, yy); ctx.lineTo(W - padR, yy); ctx.stroke();
      ctx.fillText(fmt(v), 4, yy + 4);
    }
    ctx.fillText(label, padL + 4, top + 12);
    series.forEach((points, i) => {
      ctx.strokeStyle = colors[i]; ctx.fillStyle = colors[i]; ctx.lineWidth = 1.5;
      if (points.length === 1) {  // a forecast is a single point: drawn as a dot with a guide line
        const [t, v] = points[0];
        ctx.beginPath(); ctx.arc(x(t), y(v), 5, 0, 2 * Math.PI); ctx.fill();
        ctx.setLineDash([4, 4]); ctx.beginPath(); ctx.moveTo(padL, y(v)); ctx.lineTo(x(t), y(v)); ctx.stroke();
        ctx.setLineDash([]);
        return;
      }
      ctx.beginPath();
      let pen = false;
      for (const [t, v] of points) {
        if (v === null || !isFinite(v)) { pen = false; continue; }
        if (pen) ctx.lineTo(x(t), y(v)); else { ctx.moveTo(x(t), y(v)); pen = true; }
      }
      ctx.stroke();
    });
  }

  panel(10, split - 10, [bars.map((b) => [b.ts, b.close])], ["#4aa3ff"], "close", (v) => v.toPrecision(6));
  const vs = [vols.map((r) => [r.ts, r.realized_vol_24])];
  const colors = ["#c9a227"];
  if (forecast) { vs.push([[forecast.ts, forecast.value]]); colors.push("#d64545"); }
  panel(split + 10, H - 20, vs, colors, "realized vol 24 bars (yellow), forecast next 24 (red)", (v) => v.toFixed(4));
}
