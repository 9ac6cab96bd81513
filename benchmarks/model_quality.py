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

The folds, fits and scores are `lib.model.walk_forward.walk_forward` — the same function the pipeline's
`trained_model` calls — so the benchmark and the gate in the pipeline cannot drift apart.

Issue 14 adds, per fold and fitted on the same training block: `har_plus` (lib.model.har_plus), the
TensorFlow residual ensemble on it (`har_plus_residual`, lib.model.residual), and their convex
QLIKE-weighted log combination (`combination`, weights fitted on the latest 15 % of the training block
with every member refitted on the rest — lib.model.combination). Every forecaster then gets
`improvement_vs_har` and `dm_pvalue_vs_har` (pooled, against plain HAR), the gate of lib.model.gate
names the `champion`, and `intervals` reports the holdout coverage of the 80 % / 95 % predictive
intervals and the 99 % VaR breach rate (lib.model.intervals) of the new forecasters.

    .venv/bin/python benchmarks/model_quality.py --symbols BTC,ETH --years 2 --skip-lstm --preset fast
    .venv/bin/python benchmarks/model_quality.py --symbols SOL,BNB --years 2 --end 2024-04-15
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

import polars as pl

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("CRYPTO_SHARED_OHLCV", REPO.parent / "shared" / "data" / "ohlcv"))
GOAL_IMPROVEMENT = 0.05
GOAL_PVALUE = 0.05
HOUR_MS = 3_600_000


def file_symbol(symbol: str) -> str:
    """ "BTC", "BTCUSDT" or "BTC/USDT" → the shared file's id "BTCUSDT"."""
    compact = symbol.strip().upper().replace("/", "")
    return compact if compact.endswith("USDT") else compact + "USDT"


def load_bars(symbol_ids: list[str], years: float, end: str | None = None) -> pl.DataFrame:
    """The last `years` of hourly bars of each symbol, all cut at one common end.

    The end is `end` (UTC date) when given, else the earliest last bar among the files (the files end on
    different days; cross-asset terms and pooled folds need the symbols over the same hours).
    """
    from datetime import UTC, datetime

    from crypto_platform.lib.market.schema import normalize_ohlcv
    from crypto_platform.lib.market.symbols import normalize_symbol

    loaded = []
    for symbol_id in map(file_symbol, symbol_ids):
        path = DATA_DIR / f"binance_{symbol_id}_1h.csv.gz"
        if not path.exists():
            sys.exit(
                f"model_quality: real data not found: {path} is missing. Put the Binance hourly files in "
                f"../shared/data/ohlcv beside the repo (or set CRYPTO_SHARED_OHLCV)."
            )
        with gzip.open(path) as handle:
            raw = pl.read_csv(handle.read(), schema_overrides={"ts": pl.Int64})
        loaded.append((symbol_id, normalize_ohlcv(raw)))
    if end is not None:
        end_ts = int(datetime.fromisoformat(end).replace(tzinfo=UTC).timestamp() * 1000)
    else:
        end_ts = min(int(bars["ts"].max()) for _, bars in loaded) + HOUR_MS
    frames = []
    for symbol_id, bars in loaded:
        bars = bars.filter(pl.col("ts") < end_ts)
        if years > 0:
            # + 31 days: the first window of the period needs a month of feature warm-up.
            start = end_ts - int((years * 365.25 + 31) * 24) * HOUR_MS
            bars = bars.filter(pl.col("ts") >= start)
        if bars.height == 0:
            sys.exit(f"model_quality: {symbol_id} has no bars before {end or 'the common end'}")
        frames.append(bars.with_columns(pl.lit(normalize_symbol(symbol_id)).alias("symbol")))
    return pl.concat(frames)


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _table(table: Any, dm_har: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per forecaster: the table's metrics (DM vs the best baseline) and QLIKE improvement / DM vs HAR."""
    har_q = table.row("har").qlike
    return {
        row.name: {
            "qlike": _finite(row.qlike),
            "mse_var": _finite(row.mse_var),
            "mz_r2": _finite(row.mz_r2),
            "dm_stat": _finite(row.dm_stat),
            "dm_pvalue": _finite(row.dm_pvalue),
            "improvement_vs_har": _finite((har_q - row.qlike) / har_q),
            "dm_stat_vs_har": _finite(dm_har[row.name].stat) if row.name in dm_har else None,
            "dm_pvalue_vs_har": _finite(dm_har[row.name].pvalue) if row.name in dm_har else None,
        }
        for row in table.rows
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from crypto_platform.lib.features import MODEL_FEATURES, compute_features
    from crypto_platform.lib.model.baselines import BASELINE_NAMES
    from crypto_platform.lib.model.har_features import HAR_PLUS_FEATURES
    from crypto_platform.lib.model.har_plus import HARPlusConfig
    from crypto_platform.lib.model.lstm import LSTMConfig, limit_tf_threads
    from crypto_platform.lib.model.residual import ResidualConfig
    from crypto_platform.lib.model.walk_forward import (
        FoldResult,
        candidate_windows,
        default_candidates,
        walk_forward,
    )

    limit_tf_threads(args.threads, 1)
    started = time.perf_counter()
    symbols = [file_symbol(s) for s in args.symbols.split(",")]
    bars = load_bars(symbols, args.years, args.end)
    windows, fwd_ret = candidate_windows(compute_features(bars))
    prep_s = time.perf_counter() - started

    preset = LSTMConfig.fast() if args.preset == "fast" else LSTMConfig.default()
    residual_cfg = {
        "fast": ResidualConfig.fast,
        "pipeline": ResidualConfig.pipeline,
        "default": ResidualConfig.default,
    }[args.preset]()
    if args.seeds is not None:
        residual_cfg = dataclasses.replace(residual_cfg, seeds=tuple(range(11, 11 + args.seeds)))
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
    new_models = ("har_plus", "har_plus_residual", "combination")
    candidates = default_candidates(
        residual_config=residual_cfg,
        lstm_config=None if args.skip_lstm else config,
        lstm_columns=MODEL_FEATURES,
    )

    def progress(fold: FoldResult) -> None:
        shown = [n for n in (*new_models, "lstm") if n in fold.forecasts]
        print(
            f"fold {fold.fold}: test {_iso(fold.test_start_ts)}…{_iso(fold.test_end_ts)} "
            f"n={fold.test_windows} QLIKE har {fold.qlike('har'):.4f} | "
            + " | ".join(f"{n} {fold.qlike(n):.4f}" for n in shown)
            + f" | residual {fold.seconds.get('har_plus_residual', 0):.0f}s, "
            f"lstm {fold.seconds.get('lstm', 0):.0f}s",
            file=sys.stderr,
            flush=True,
        )

    result = walk_forward(
        windows,
        candidates,
        n_folds=args.folds,
        min_train_frac=args.min_train_frac,
        reference="har",
        forward_log_return=fwd_ret,
        on_fold=progress,
    )

    fold_reports = []
    for fold in result.folds:
        table = fold.table
        lstm_params = fold.params.get("lstm")
        fold_reports.append(
            {
                "fold": fold.fold,
                "train_windows": fold.train_windows,
                "test_windows": fold.test_windows,
                "test_start": _iso(fold.test_start_ts),
                "test_end": _iso(fold.test_end_ts),
                "best_baseline": table.best_baseline,
                "lstm_vs_best_baseline": _improvement(table, "lstm") if lstm_params else None,
                "metrics": _table(table, fold.dm_vs_reference),
                "skipped_baselines": {n: why for n, why in fold.skipped.items() if n in BASELINE_NAMES},
                "skipped": fold.skipped,
                "combination_weights": fold.params.get("combination"),
                "har_plus_qlike_scale": fold.params.get("har_plus", {}).get("qlike_scale"),
                "residual_members": fold.params.get("har_plus_residual", {}).get("members"),
                "lstm_epochs_run": lstm_params.get("epochs_run") if lstm_params else None,
                "lstm_best_epoch": lstm_params.get("best_epoch") if lstm_params else None,
                "seconds_baselines": round(sum(fold.seconds.get(n, 0.0) for n in BASELINE_NAMES), 1),
                "seconds_har_plus": round(fold.seconds.get("har_plus", 0.0), 2),
                "seconds_residual": round(fold.seconds.get("har_plus_residual", 0.0), 1),
                "seconds_combination": round(fold.seconds.get("combination", 0.0), 1),
                "seconds_lstm": round(fold.seconds.get("lstm", 0.0), 1),
            }
        )

    overall = result.table
    pooled_table = _table(overall, result.dm_vs_reference)
    decision = result.decide()
    intervals = {n: v for n, v in result.interval_report().items() if n in new_models}
    # Issue 14 asks whether the TF residual beats HAR+ itself: the same DM test with HAR+ as the reference.
    vs_plus = result.dm_against("har_plus") if "har_plus" in result.forecasts else {}
    residual_vs_har_plus = {
        name: {
            "improvement": _finite(result.improvement(name, "har_plus")),
            "dm_stat": _finite(vs_plus[name].stat),
            "dm_pvalue": _finite(vs_plus[name].pvalue),
        }
        for name in ("har_plus_residual", "combination", "lstm")
        if name in vs_plus
    }
    champion = decision.champion
    champ_row = pooled_table[champion]
    best = overall.best_baseline
    report: dict[str, Any] = {
        "benchmark": "model_quality",
        "figure": f"pooled out-of-sample QLIKE of the champion ({champion})",
        "value": overall.row(champion).qlike,
        "baseline": "pooled QLIKE of plain HAR (the reference)",
        "baseline_value": overall.row("har").qlike,
        "ratio": overall.row(champion).qlike / overall.row("har").qlike,
        "champion": champion,
        "champion_improvement_vs_har": champ_row["improvement_vs_har"],
        "champion_dm_pvalue_vs_har": champ_row["dm_pvalue_vs_har"],
        "champion_folds_won_vs_har": next(
            (v.folds_won for v in decision.verdicts if v.name == champion), None
        ),
        "goal": f"champion ≥ {GOAL_IMPROVEMENT:.0%} below plain HAR, DM p < {GOAL_PVALUE}, ≥ 3 of 4 folds",
        "gate": decision.to_dict(),
        "pooled": pooled_table,
        "pooled_best_baseline": best,
        "intervals": intervals,
        "vs_har_plus": residual_vs_har_plus,
        "folds": fold_reports,
        "settings": {
            "symbols": ",".join(symbols),
            "years": args.years,
            "end": args.end,
            "folds": args.folds,
            "min_train_frac": args.min_train_frac,
            "preset": args.preset,
            "har_plus": HARPlusConfig().to_dict(),
            "residual": residual_cfg.to_dict(),
            "lstm": None if args.skip_lstm else config.to_dict(),
            "features": [*MODEL_FEATURES, *HAR_PLUS_FEATURES],
            "windows": len(windows),
            "first_window": _iso(int(windows.ts.min())),
            "last_window": _iso(int(windows.ts.max())),
            "fingerprint": result.fingerprint,
        },
        "seconds": {"prepare": round(prep_s, 1), "total": round(time.perf_counter() - started, 1)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "tf_threads": args.threads},
    }
    report["goal_met"] = bool(
        champion != "har"
        and (champ_row["improvement_vs_har"] or 0) >= GOAL_IMPROVEMENT
        and (champ_row["dm_pvalue_vs_har"] or 1) < GOAL_PVALUE
        and (report["champion_folds_won_vs_har"] or 0) >= 3
    )
    if "lstm" in result.forecasts and best:
        report["lstm_improvement_vs_best_baseline"] = _finite(result.improvement("lstm", best))
        report["lstm_dm_pvalue_vs_best_baseline"] = _finite(overall.row("lstm").dm_pvalue)
    return report


def _improvement(table: Any, name: str) -> float | None:
    best = table.best_baseline
    return _finite((table.row(best).qlike - table.row(name).qlike) / table.row(best).qlike) if best else None


def _iso(ts_ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    names = list(report["pooled"])
    folds = report["folds"]
    lines = [
        f"# Model quality: {settings['symbols']}, {settings['years']} years to {settings['last_window']}, "
        f"{len(folds)} walk-forward folds ({settings['preset']} preset)",
        "",
        f"Champion (gate vs plain HAR): **{report['champion']}** — improvement "
        f"{report['champion_improvement_vs_har'] or 0:+.2%}, DM p {_p(report['champion_dm_pvalue_vs_har'])}, "
        f"folds won {report['champion_folds_won_vs_har']}. Goal: {report['goal']} — "
        f"**{'met' if report['goal_met'] else 'not met'}**.",
        "",
        "| forecaster | "
        + " | ".join(f"fold {f['fold']}" for f in folds)
        + " | pooled QLIKE | vs HAR | DM p vs HAR | MZ R² |",
        "|---|" + "---:|" * (len(folds) + 4),
    ]
    for name in names:
        p = report["pooled"][name]
        cells = [
            *(_q(f["metrics"][name]["qlike"]) for f in folds),
            _q(p["qlike"]),
            f"{p['improvement_vs_har']:+.2%}",
            _p(p["dm_pvalue_vs_har"]) if name != "har" else "(ref)",
            f"{p['mz_r2']:.3f}" if p["mz_r2"] is not None else "—",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report["intervals"]:
        lines += [
            "",
            "| forecaster | 80 % coverage | 95 % coverage | 99 % VaR breaches |",
            "|---|---:|---:|---:|",
        ]
        for name, iv in report["intervals"].items():
            lines.append(
                f"| {name} | {iv['coverage_80']:.1%} | {iv['coverage_95']:.1%} "
                f"| {iv['var99_breach_rate']:.2%} |"
            )
    for name, v in report.get("vs_har_plus", {}).items():
        lines.append(f"\n{name} vs har_plus: {v['improvement']:+.2%}, DM p {_p(v['dm_pvalue'])}")
    secs = [
        f"fold {f['fold']}: HAR+ {f['seconds_har_plus']}s, residual {f['seconds_residual']}s" for f in folds
    ]
    lines += ["", "Training time per fold: " + "; ".join(secs)]
    return "\n".join(lines) + "\n"


def _q(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", default="BTC,ETH", help="any of the shared files: BTC, ETH, SOL, BNB")
    parser.add_argument("--years", type=float, default=3.0, help="most recent years of data (0: all)")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--min-train-frac", type=float, default=0.5)
    parser.add_argument(
        "--preset",
        choices=("default", "pipeline", "fast"),
        default="default",
        help="residual preset: ResidualConfig.default / .pipeline (the pipeline's default) / .fast",
    )
    parser.add_argument("--epochs", type=int, default=None, help="max LSTM epochs per fold")
    parser.add_argument("--units", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--l2", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--end", default=None, help="UTC date the period ends (default: the files' common end)"
    )
    parser.add_argument("--seeds", type=int, default=None, help="residual ensemble size (default: preset's)")
    parser.add_argument("--skip-lstm", action="store_true", help="leave the plain LSTM out (it is slow)")
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
