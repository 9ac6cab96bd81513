"""Model quality on real hourly Binance data: the LSTM against every baseline, walk-forward.

Expanding-window folds (`windows.walk_forward_folds`): fold k trains on every window purged (24 bars)
before its test block; the test blocks tile the most recent (1 − min_train_frac) of the sample. Per
fold: the baselines are fitted on the training block (EWMA λ tuned on it), the LSTM is trained on it
with early stopping on its own last 15 % (purged), and all are scored on the test block — QLIKE, MSE
of the variance, Mincer–Zarnowitz R², Diebold–Mariano vs the fold's best baseline (Newey–West, 23
lags, on the per-hour cross-symbol mean loss differential). The out-of-sample losses of all folds then
form one series: the headline is the pooled QLIKE of the LSTM vs the best baseline over the same
hours, with a DM test on that pooled series.

The issue's goal: LSTM QLIKE ≥ 5 % below the best baseline with DM p < 0.05.

Prints JSON (`figure` = pooled LSTM QLIKE, `baseline` = best baseline's, `ratio` = their quotient);
`--markdown` also writes a summary table. Bounded on 2 cores by `--years` (most recent years of data),
`--folds` and `--epochs` (maximum LSTM epochs per fold).

    .venv/bin/python benchmarks/model_quality.py --years 3 --folds 4 --epochs 8 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("CRYPTO_SHARED_OHLCV", REPO.parent / "shared" / "data" / "ohlcv"))
GOAL_IMPROVEMENT = 0.05
GOAL_PVALUE = 0.05
HOUR_MS = 3_600_000


def load_bars(symbol_ids: list[str], years: float) -> pl.DataFrame:
    from crypto_platform.lib.market.schema import normalize_ohlcv
    from crypto_platform.lib.market.symbols import normalize_symbol

    frames = []
    for symbol_id in symbol_ids:
        path = DATA_DIR / f"binance_{symbol_id}_1h.csv.gz"
        if not path.exists():
            sys.exit(
                f"model_quality: real data not found: {path} is missing. Put the Binance hourly files in "
                f"../shared/data/ohlcv beside the repo (or set CRYPTO_SHARED_OHLCV)."
            )
        with gzip.open(path) as handle:
            raw = pl.read_csv(handle.read(), schema_overrides={"ts": pl.Int64})
        bars = normalize_ohlcv(raw)
        if years > 0:
            # + 31 days: the first window of the period needs a month of feature warm-up.
            start = int(bars["ts"].max()) - int((years * 365.25 + 31) * 24) * HOUR_MS
            bars = bars.filter(pl.col("ts") >= start)
        frames.append(bars.with_columns(pl.lit(normalize_symbol(symbol_id)).alias("symbol")))
    return pl.concat(frames)


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _table(table: Any) -> dict[str, dict[str, float | None]]:
    return {
        row.name: {
            "qlike": _finite(row.qlike),
            "mse_var": _finite(row.mse_var),
            "mz_r2": _finite(row.mz_r2),
            "dm_stat": _finite(row.dm_stat),
            "dm_pvalue": _finite(row.dm_pvalue),
        }
        for row in table.rows
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from crypto_platform.lib.features import MODEL_FEATURES, compute_features
    from crypto_platform.lib.model.baselines import BASELINES
    from crypto_platform.lib.model.evaluation import evaluate_forecasts
    from crypto_platform.lib.model.lstm import LSTMConfig, LSTMForecaster, limit_tf_threads
    from crypto_platform.lib.model.training import fit_baselines
    from crypto_platform.lib.model.windows import build_windows, walk_forward_folds

    limit_tf_threads(args.threads, 1)
    started = time.perf_counter()
    bars = load_bars(args.symbols.split(","), args.years)
    features = compute_features(bars)
    windows = build_windows(features, MODEL_FEATURES)
    prep_s = time.perf_counter() - started

    preset = LSTMConfig.fast() if args.preset == "fast" else LSTMConfig.default()
    overrides = {
        k: v
        for k, v in {
            "max_epochs": args.epochs,
            "units": args.units,
            "layers": args.layers,
            "learning_rate": args.learning_rate,
            "batch_size": args.batch_size,
            "dropout": args.dropout,
            "patience": args.patience,
            "l2": args.l2,
        }.items()
        if v is not None
    }
    config = dataclasses.replace(preset, **overrides)
    folds = walk_forward_folds(windows.ts, n_folds=args.folds, min_train_frac=args.min_train_frac)

    fold_reports = []
    pooled: dict[str, list[np.ndarray]] = {}
    pooled_y, pooled_ts = [], []
    for k, fold in enumerate(folds):
        t0 = time.perf_counter()
        train, test = windows.take(fold.train), windows.take(fold.test)
        baselines, skipped = fit_baselines(train, tuple(BASELINES))
        t1 = time.perf_counter()
        lstm = LSTMForecaster(config).fit(train)
        t2 = time.perf_counter()
        forecasts = {"lstm": lstm.predict(test)}
        forecasts.update(
            {name: np.asarray(b.predict(test), dtype=np.float64) for name, b in baselines.items()}
        )
        table = evaluate_forecasts(test.y, forecasts, ts=test.ts)
        trained = lstm.trained
        fold_reports.append(
            {
                "fold": k,
                "train_windows": len(train),
                "test_windows": len(test),
                "test_start": _iso(fold.test_start_ts),
                "test_end": _iso(fold.test_end_ts),
                "best_baseline": table.best_baseline,
                "lstm_vs_best_baseline": _improvement(table, "lstm"),
                "metrics": _table(table),
                "skipped_baselines": skipped,
                "lstm_epochs_run": trained.epochs_run if trained else None,
                "lstm_best_epoch": trained.best_epoch if trained else None,
                "seconds_baselines": round(t1 - t0, 1),
                "seconds_lstm": round(t2 - t1, 1),
            }
        )
        print(
            f"fold {k}: test {_iso(fold.test_start_ts)}…{_iso(fold.test_end_ts)} n={len(test)} "
            f"lstm QLIKE {table.row('lstm').qlike:.4f} vs {table.best_baseline} "
            f"{table.row(table.best_baseline).qlike:.4f} (DM p {table.row('lstm').dm_pvalue:.3g}), "
            f"{t2 - t1:.0f}s LSTM",
            file=sys.stderr,
            flush=True,
        )
        for name, values in forecasts.items():
            pooled.setdefault(name, []).append(values)
        pooled_y.append(test.y)
        pooled_ts.append(test.ts)

    y = np.concatenate(pooled_y)
    overall = evaluate_forecasts(
        y, {n: np.concatenate(v) for n, v in pooled.items()}, ts=np.concatenate(pooled_ts)
    )
    best = overall.best_baseline
    lstm_q, best_q = overall.row("lstm").qlike, overall.row(best).qlike
    improvement = (best_q - lstm_q) / best_q
    pvalue = overall.row("lstm").dm_pvalue
    return {
        "benchmark": "model_quality",
        "figure": "pooled out-of-sample QLIKE of the LSTM",
        "value": lstm_q,
        "baseline": f"pooled QLIKE of the best baseline ({best})",
        "baseline_value": best_q,
        "ratio": lstm_q / best_q,
        "lstm_improvement_vs_best_baseline": improvement,
        "lstm_dm_pvalue_vs_best_baseline": _finite(pvalue),
        "goal": f"improvement ≥ {GOAL_IMPROVEMENT:.0%} with DM p < {GOAL_PVALUE}",
        "goal_met": bool(
            improvement >= GOAL_IMPROVEMENT and pvalue < GOAL_PVALUE and overall.row("lstm").dm_stat < 0
        ),
        "pooled": _table(overall),
        "pooled_best_baseline": best,
        "folds": fold_reports,
        "settings": {
            "symbols": args.symbols,
            "years": args.years,
            "folds": args.folds,
            "min_train_frac": args.min_train_frac,
            "lstm": config.to_dict(),
            "features": list(MODEL_FEATURES),
            "windows": len(windows),
            "first_window": _iso(int(windows.ts.min())),
            "last_window": _iso(int(windows.ts.max())),
        },
        "seconds": {"prepare": round(prep_s, 1), "total": round(time.perf_counter() - started, 1)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "tf_threads": args.threads},
    }


def _improvement(table: Any, name: str) -> float | None:
    best = table.best_baseline
    return _finite((table.row(best).qlike - table.row(name).qlike) / table.row(best).qlike) if best else None


def _iso(ts_ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def markdown(report: dict[str, Any]) -> str:
    names = list(report["pooled"])
    lines = [
        f"# Model quality: {report['settings']['symbols']}, last {report['settings']['years']} years, "
        f"{len(report['folds'])} walk-forward folds",
        "",
        f"LSTM {report['settings']['lstm']['layers']}×{report['settings']['lstm']['units']}, "
        f"≤ {report['settings']['lstm']['max_epochs']} epochs. Goal: {report['goal']} — "
        f"**{'met' if report['goal_met'] else 'not met'}** (pooled improvement "
        f"{report['lstm_improvement_vs_best_baseline']:+.2%}, "
        f"DM p {_p(report['lstm_dm_pvalue_vs_best_baseline'])}).",
        "",
        "| forecaster | "
        + " | ".join(f"fold {f['fold']} QLIKE" for f in report["folds"])
        + " | pooled QLIKE | "
        "pooled MSE (var) | pooled MZ R² | pooled DM p vs best |",
        "|---|" + "---:|" * (len(report["folds"]) + 4),
    ]
    for name in names:
        per_fold = [f["metrics"][name]["qlike"] for f in report["folds"]]
        p = report["pooled"][name]
        cells = [
            *(f"{q:.4f}" if q is not None else "—" for q in per_fold),
            f"{p['qlike']:.4f}",
            f"{p['mse_var']:.3e}",
            f"{p['mz_r2']:.3f}" if p["mz_r2"] is not None else "—",
            _p(p["dm_pvalue"]) if name != report["pooled_best_baseline"] else "(best)",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Per-fold DM p (LSTM vs that fold's best baseline): "
        + ", ".join(f"fold {f['fold']}: {_p(f['metrics']['lstm']['dm_pvalue'])}" for f in report["folds"])
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", default="BTCUSDT,ETHUSDT")
    parser.add_argument("--years", type=float, default=3.0, help="most recent years of data (0: all)")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--min-train-frac", type=float, default=0.5)
    parser.add_argument("--preset", choices=("default", "fast"), default="default")
    parser.add_argument("--epochs", type=int, default=None, help="max LSTM epochs per fold")
    parser.add_argument("--units", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--l2", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the summary table here")
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(report))
    print(markdown(report), file=sys.stderr)


if __name__ == "__main__":
    main()
