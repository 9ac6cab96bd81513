"""The model card of a trained / registered version, from its walk-forward evidence: markdown + a plot.

`model_card_markdown(result, decision, ...)` writes, from a `walk_forward.WalkForwardResult` and the
`gate.GateDecision` taken on it:
- the data window (symbols, first / last window, number of windows) and the sha256 fingerprint of the
  windows evaluated, the fold layout (train / test sizes and test periods) and any candidate skipped;
- the pooled out-of-sample table of every candidate against every baseline (QLIKE per fold and pooled,
  improvement and DM p-value vs the reference, DM p vs the pooled best baseline, MSE, MZ R²), and the
  same pooled series per symbol;
- predictive-interval coverage (nominal vs measured) and the 99 % VaR breach rate;
- what won the gate and why, every challenger's failed conditions included.
`mincer_zarnowitz_png(result, names)` is the Mincer–Zarnowitz plot (realized vs forecast variance,
binned, with the fitted RV² = a + b·ĥ line and the 45° line of an unbiased forecast).
Pure: no MLflow or Dagster here; the asset logs the text (`model_card.md`) and the PNG.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from crypto_platform.lib.model.evaluation import EvaluationTable, diebold_mariano_against
from crypto_platform.lib.model.gate import GateDecision
from crypto_platform.lib.model.metrics import DieboldMariano, mincer_zarnowitz
from crypto_platform.lib.model.walk_forward import WalkForwardResult

CARD_ARTIFACT = "model_card.md"
MZ_PLOT_ARTIFACT = "mincer_zarnowitz.png"
# MLflow's SQL registry stores a version's description in a String(5000) column: PostgreSQL refuses
# anything longer (SQLite does not check), so the description is the card cut to fit.
DESCRIPTION_LIMIT = 5000


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def _pooled_rows(
    result: WalkForwardResult, table: EvaluationTable, dm: Mapping[str, DieboldMariano], with_folds: bool
) -> list[str]:
    ref = result.reference
    ref_q = table.row(ref).qlike
    # The table's own DM is against its best baseline: a second column only when that is not the reference.
    vs_best = table.best_baseline not in (None, ref)
    head = ["forecaster", "kind"]
    if with_folds:
        head += [f"fold {f.fold}" for f in result.folds]
    head += ["QLIKE", f"vs {ref}", f"DM p vs {ref}"]
    head += [f"DM p vs {table.best_baseline}"] if vs_best else []
    head += ["MSE (var)", "MZ R²"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for row in table.rows:
        cells = [f"**{row.name}**" if row.name == table.best else row.name, row.kind]
        if with_folds:
            cells += [_num(f.qlike(row.name), ".4f") for f in result.folds]
        if row.name == ref:
            vs_ref, p_ref = "(ref)", "(ref)"
        else:
            vs_ref = _num((ref_q - row.qlike) / ref_q, "+.2%")
            test = dm.get(row.name)
            p_ref = _num(test.pvalue, ".3g") if test is not None else "—"
        cells += [_num(row.qlike, ".4f"), vs_ref, p_ref]
        cells += [_num(row.dm_pvalue, ".3g")] if vs_best else []
        cells += [_num(row.mse_var, ".3e"), _num(row.mz_r2, ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def model_card_markdown(
    result: WalkForwardResult,
    decision: GateDecision,
    model_name: str | None = None,
    version: str | None = None,
    configuration: Mapping[str, Any] | None = None,
    source: str = "exchange",
) -> str:
    """The card (see the module docstring). `configuration`: the chosen settings (HAR+ terms, ridge…);
    `source`: where the bars came from ("exchange" or "simulated"), printed with the data window."""
    symbols = sorted({str(s) for s in result.symbol})
    title = f"{model_name or decision.champion}" + (f" v{version}" if version else "")
    lines = [
        f"# Model card: {title}",
        "",
        "## Data",
        f"- symbols: {', '.join(symbols)} (bars: {source}); windows evaluated: {result.n_windows}, "
        f"first {_iso(result.first_ts)}, last {_iso(result.last_ts)} UTC",
        f"- fingerprint (sha256 of the windows): `{result.fingerprint}`",
        "- target: realized volatility of the next 24 bars; loss: QLIKE of the variance (lower is better)",
        "",
        "## Walk-forward folds",
        f"{len(result.folds)} expanding folds, each trained on every window whose target ends before its "
        "test block (purged by the horizon), scored on the block; the test blocks tile the tail once.",
        "",
        "| fold | train windows | test windows | test period (UTC) | skipped |",
        "|---:|---:|---:|---|---|",
    ]
    for f in result.folds:
        skipped = "; ".join(f"{n}: {why}" for n, why in f.skipped.items()) or "—"
        lines.append(
            f"| {f.fold} | {f.train_windows} | {f.test_windows} | {_iso(f.test_start_ts)} … "
            f"{_iso(f.test_end_ts)} | {skipped} |"
        )
    lines += [
        "",
        "## Out-of-sample results, pooled over the folds",
        f"Reference: **{result.reference}**. DM: Diebold–Mariano on the QLIKE differential, per-hour mean "
        f"over symbols, Newey–West HAC ({result.table.hac_lag} lags).",
        "",
        *_pooled_rows(result, result.table, result.dm_vs_reference, with_folds=True),
    ]
    for sym, table in result.per_symbol_tables().items():
        rows = result.symbol == sym
        dm = diebold_mariano_against(
            result.y[rows],
            {n: f[rows] for n, f in result.forecasts.items()},
            result.reference,
            result.ts[rows],
        )
        lines += ["", f"### {sym}", "", *_pooled_rows(result, table, dm, with_folds=False)]

    intervals = result.interval_report()
    if intervals:
        levels = [k for k in next(iter(intervals.values())) if k.startswith("coverage_")]
        head = [f"{k.removeprefix('coverage_')} % interval" for k in levels]
        lines += [
            "",
            "## Predictive intervals (validation log-residual quantiles, scored out of sample)",
            "",
            "| forecaster | " + " | ".join(head) + " | 99 % VaR breaches |",
            "|---|" + "---:|" * (len(head) + 1),
        ]
        for name, iv in intervals.items():
            cells = [f"{iv[k]:.1%} (nominal {k.removeprefix('coverage_')} %)" for k in levels]
            var = iv.get("var99_breach_rate")
            cells.append("—" if var is None else f"{var:.2%} (nominal 1 %)")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")

    lines += ["", "## Gate decision", "", f"Rule: {decision.to_dict()['rule']}.", ""]
    champion = decision.champion
    if champion == decision.reference:
        lines.append(f"**No challenger passed: {decision.reference} stays.**")
    else:
        verdict = next(v for v in decision.verdicts if v.name == champion)
        lines.append(
            f"**{champion} won**: pooled QLIKE {verdict.improvement:+.2%} vs {decision.reference}, "
            f"DM p {_num(result.evidence(champion, decision.reference).dm_pvalue, '.3g')}, "
            f"lower QLIKE in {verdict.folds_won} of {len(result.folds)} folds; lowest pooled QLIKE among "
            "the challengers that passed."
        )
    lines += ["", "| challenger | passed | vs reference | folds won | why not |", "|---|---|---:|---:|---|"]
    for v in decision.verdicts:
        why = "; ".join(v.reasons) or "—"
        lines.append(
            f"| {v.name} | {'yes' if v.passed else 'no'} | {v.improvement:+.2%} | {v.folds_won} | {why} |"
        )
    if configuration:
        lines += ["", "## Configuration", ""]
        lines += [f"- `{k}`: {v}" for k, v in configuration.items()]
    lines += ["", f"Mincer–Zarnowitz plot: `{MZ_PLOT_ARTIFACT}`."]
    return "\n".join(lines) + "\n"


def version_description(card: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card as a registry version's description: whole, when it fits the registry's column;
    otherwise without its longest sections (never the title or the gate's decision) until it fits, in
    the card's order, then a line naming what was left out and the artifact that holds all of it."""
    if len(card) <= limit:
        return card
    room = limit - 400  # what the closing line may need (section titles are short)
    sections = re.split(r"(?=\n## )", card)
    protected = {0} | {i for i, sec in enumerate(sections) if sec.startswith("\n## Gate decision")}
    by_length = sorted(
        (i for i in range(len(sections)) if i not in protected), key=lambda i: -len(sections[i])
    )
    left_out: set[int] = set()
    for i in by_length:
        if sum(len(sec) for j, sec in enumerate(sections) if j not in left_out) <= room:
            break
        left_out.add(i)
    kept = "".join(sec for i, sec in enumerate(sections) if i not in left_out)
    titles = " · ".join(sections[i].strip().splitlines()[0].lstrip("# ") for i in sorted(left_out))
    closing = (
        f"\n\n*(Left out to fit the registry: {titles or 'the end'}. The full card is the run's "
        f"`{CARD_ARTIFACT}` artifact.)*"
    )
    return kept[: limit - len(closing)] + closing


def mincer_zarnowitz_png(
    result: WalkForwardResult, names: Sequence[str] | None = None, bins: int = 20
) -> bytes:
    """Realized vs forecast variance of `names` (default: the reference and the pooled best forecaster;
    pass the champion) on the pooled out-of-sample series: quantile-binned means on log axes, each
    one's fitted MZ line, and the 45° line of an unbiased forecast."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = list(dict.fromkeys(names or [result.reference, result.table.best]))
    unknown = [n for n in chosen if n not in result.forecasts]
    if unknown:
        raise KeyError(f"{unknown} are not in the pooled evaluation; have {list(result.names)}")
    rv2 = result.y**2
    fig = Figure(figsize=(5.6, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lo, hi = math.inf, 0.0
    for name in chosen:
        h = result.forecasts[name] ** 2
        edges = np.unique(np.quantile(h, np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges, h, side="right") - 1, 0, edges.size - 2)
        x = np.array([h[which == b].mean() for b in range(edges.size - 1) if np.any(which == b)])
        y = np.array([rv2[which == b].mean() for b in range(edges.size - 1) if np.any(which == b)])
        mz = mincer_zarnowitz(rv2, h)
        line = ax.plot(x, y, "o", markersize=4, label=f"{name}: a={mz.a:.2e}, b={mz.b:.2f}, R²={mz.r2:.3f}")
        grid = np.geomspace(x.min(), x.max(), 50)
        if math.isfinite(mz.b):
            ax.plot(grid, np.maximum(mz.a + mz.b * grid, 1e-12), color=line[0].get_color(), linewidth=1)
        lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
    ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=0.8, label="unbiased (a=0, b=1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("forecast variance ĥ (24 bars), bin mean")
    ax.set_ylabel("realized variance RV² (24 bars), bin mean")
    ax.set_title("Mincer–Zarnowitz, pooled out-of-sample")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()
