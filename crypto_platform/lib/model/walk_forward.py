"""Walk-forward evaluation of every candidate forecaster: one implementation for pipeline and benchmark.

`walk_forward(windows, candidates, n_folds=4)` cuts the pooled (all-symbol) windows into expanding
purged folds (`windows.walk_forward_folds`: fold k trains on every window whose target ends before its
test block), fits each `Candidate` on the fold's training block, in the given order, and scores every
fitted one on the test block: QLIKE / MSE / Mincer–Zarnowitz (`evaluation.evaluate_forecasts`, DM
against the fold's best baseline) and the QLIKE Diebold–Mariano test against `reference` (plain HAR by
default; Newey–West, per-hour cross-symbol mean differential). The test blocks tile the sample's tail
exactly once, so the out-of-sample forecasts of all folds form one pooled series; the result scores it
the same way and turns it into `gate.CandidateEvidence`, so `gate.choose_champion` decides.

A candidate is a name and a `fit(train, context) -> model` function (the model has
`predict(WindowSet) -> volatility`); `context.fitted` holds the candidates already fitted on the same
fold (the residual builds on that fold's HAR+, the combination mixes the fitted members), and
`context.candidates` every candidate spec (the combination refits its members on the early part of
the block to fit its weights on the rest). A candidate that cannot be fitted on some fold
(`ValueError` / `RuntimeError`: GARCH failing to converge, a block too small) is reported in that
fold's `skipped` and left out of the pooled evaluation and the gate, which need every fold; the
reference cannot be skipped. Models are not kept (`keep_models=True` keeps them on each fold).

`decide_against_all([incumbent, best_baseline])` is the promotion rule (pass the gate against each).
`candidate_windows(features)` turns the pipeline's feature frame (all symbols) into the windows every
default candidate reads and their forward log returns; the benchmark uses it too.

Predictive intervals: a fitted model that exposes `validation_log_residuals` (HAR+, the residual
ensemble, the combination) gets a `LogResidualDispersion` per fold; `interval_report` scores each
fold's intervals on its own test block and pools the coverage, with the 99 % VaR breach rate when the
windows' forward log returns are given.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from crypto_platform.lib.model.baselines import BASELINES
from crypto_platform.lib.model.combination import CombinationWeights, combine, fit_combination
from crypto_platform.lib.model.evaluation import EvaluationTable, diebold_mariano_against, evaluate_forecasts
from crypto_platform.lib.model.gate import (
    DEFAULT_FOLD_WIN_SHARE,
    DEFAULT_MARGIN,
    DEFAULT_MAX_PVALUE,
    CandidateEvidence,
    GateDecision,
    choose_champion,
)
from crypto_platform.lib.model.har_plus import HARPlusBaseline, HARPlusConfig, validation_cut
from crypto_platform.lib.model.intervals import (
    DEFAULT_LEVELS,
    LogResidualDispersion,
    fit_dispersion,
    interval_coverage,
    log_residuals,
    var_breach_rate,
)
from crypto_platform.lib.model.metrics import DieboldMariano
from crypto_platform.lib.model.windows import WindowSet, walk_forward_folds

DEFAULT_REFERENCE = "har"
COMBINATION_MEMBERS: tuple[str, ...] = ("har_plus", "har", "ewma", "garch")
VAR_ASSUMPTION = "24-bar log return ~ N(0, forecast variance), unit long position"


# -- candidates -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldContext:
    """What a candidate's fit may read besides its training block."""

    fold: int
    fitted: Mapping[str, Any]  # candidates fitted earlier on this fold, by name
    candidates: Mapping[str, Candidate]  # every candidate spec, by name (to refit a member elsewhere)


@dataclass(frozen=True)
class Candidate:
    """A forecaster the walk-forward fits on each fold: `fit(train, context)` returns a fitted model."""

    name: str
    fit: Callable[[WindowSet, FoldContext], Any]
    requires: tuple[str, ...] = ()  # candidates that must be fitted first on the same fold

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a candidate needs a name")


def baseline_candidate(name: str) -> Candidate:
    """One of `baselines.BASELINES` (naive, expanding_mean, ewma, har, garch)."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    return Candidate(name, lambda train, _ctx: BASELINES[name]().fit(train))


def har_plus_candidate(config: HARPlusConfig | None = None, name: str = "har_plus") -> Candidate:
    return Candidate(name, lambda train, _ctx: HARPlusBaseline(config, name=name).fit(train))


def residual_candidate(
    config: Any = None, base: str = "har_plus", name: str = "har_plus_residual"
) -> Candidate:
    """The TF residual ensemble (`residual.ResidualConfig`, default or fast) on the fold's fitted HAR+."""

    def fit(train: WindowSet, ctx: FoldContext) -> Any:
        from crypto_platform.lib.model.residual import ResidualHARPlusForecaster

        return ResidualHARPlusForecaster(config, base=ctx.fitted[base]).fit(train)

    return Candidate(name, fit, requires=(base,))


class _ColumnsForecaster:
    """A model trained on a subset of the window columns (the plain LSTM reads MODEL_FEATURES only)."""

    def __init__(self, model: Any, columns: tuple[str, ...]) -> None:
        self.model, self.columns, self.name = model, columns, model.name

    def predict(self, windows: WindowSet) -> np.ndarray:
        from crypto_platform.lib.model.training import select_columns

        return self.model.predict(select_columns(windows, self.columns))

    def params(self) -> dict[str, Any]:
        return self.model.params()


def lstm_candidate(config: Any, columns: Sequence[str], name: str = "lstm") -> Candidate:
    """The plain LSTM (`lstm.LSTMConfig`) on `columns` of the windows."""
    cols = tuple(columns)

    def fit(train: WindowSet, _ctx: FoldContext) -> Any:
        from crypto_platform.lib.model.lstm import LSTMForecaster
        from crypto_platform.lib.model.training import select_columns

        return _ColumnsForecaster(LSTMForecaster(config).fit(select_columns(train, cols)), cols)

    return Candidate(name, fit)


class CombinationForecaster:
    """Convex log-space combination of fitted members (`combination`), with its validation residuals."""

    def __init__(
        self, weights: CombinationWeights, members: Mapping[str, Any], validation_log_residuals: np.ndarray
    ) -> None:
        self.name = "combination"
        self.weights = weights
        self.members = dict(members)
        self.validation_log_residuals = validation_log_residuals

    def predict(self, windows: WindowSet) -> np.ndarray:
        return combine(self.weights, {n: self.members[n].predict(windows) for n in self.weights.weights})

    def params(self) -> dict[str, Any]:
        return self.weights.to_dict()


def combination_candidate(
    members: Sequence[str] = COMBINATION_MEMBERS, validation_fraction: float = 0.15, name: str = "combination"
) -> Candidate:
    """Weights fitted on the latest `validation_fraction` of the block, each member refitted on the rest
    (purged); the forecast mixes the members fitted on the whole block. Members that were not fitted on
    this fold (a skipped GARCH) are left out of the mix."""

    def fit(train: WindowSet, ctx: FoldContext) -> CombinationForecaster:
        present = [m for m in members if m in ctx.fitted]
        if not present:
            raise ValueError(f"combination: none of its members {list(members)} was fitted")
        fit_rows, val_rows = validation_cut(train.ts, validation_fraction, train.horizon, train.bar_ms)
        early, val = train.take(fit_rows), train.take(val_rows)
        early_fitted: dict[str, Any] = {}
        for member in present:
            spec = ctx.candidates[member]
            early_fitted[member] = spec.fit(early, FoldContext(ctx.fold, early_fitted, ctx.candidates))
        val_forecasts = {m: np.asarray(early_fitted[m].predict(val), dtype=np.float64) for m in present}
        weights = fit_combination(val.y, val_forecasts)
        residuals = log_residuals(val.y, combine(weights, val_forecasts))
        return CombinationForecaster(weights, {m: ctx.fitted[m] for m in present}, residuals)

    return Candidate(name, fit)


def default_candidates(
    residual_config: Any = None,
    lstm_config: Any = None,
    lstm_columns: Sequence[str] = (),
    baselines: Sequence[str] = tuple(BASELINES),
    har_plus_config: HARPlusConfig | None = None,
    combination_members: Sequence[str] = COMBINATION_MEMBERS,
) -> list[Candidate]:
    """Every baseline, HAR+, the residual on it, their combination, and the LSTM when configured.

    `residual_config=None` means `ResidualConfig.default()`; pass `ResidualConfig.fast()` for the fast
    preset. The plain LSTM is left out unless `lstm_config` is given (it is slow and never wins)."""
    out = [baseline_candidate(b) for b in baselines]
    out += [har_plus_candidate(har_plus_config), residual_candidate(residual_config)]
    out.append(combination_candidate(combination_members))
    if lstm_config is not None:
        out.append(lstm_candidate(lstm_config, lstm_columns))
    return out


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FoldResult:
    fold: int
    train_windows: int
    test_windows: int
    test_start_ts: int
    test_end_ts: int  # exclusive
    table: EvaluationTable  # every candidate fitted on this fold, DM vs the fold's best baseline
    dm_vs_reference: dict[str, DieboldMariano]
    params: dict[str, dict[str, Any]]
    seconds: dict[str, float]  # fit + predict per candidate
    skipped: dict[str, str]  # candidate → why it could not be fitted on this fold
    dispersions: dict[str, LogResidualDispersion]
    forecasts: dict[str, np.ndarray]  # out-of-sample volatility forecasts on the test block
    models: dict[str, Any] = field(default_factory=dict)  # only with keep_models

    def qlike(self, name: str) -> float:
        return self.table.row(name).qlike


@dataclass(frozen=True, eq=False)
class WalkForwardResult:
    """Per-fold results and the pooled out-of-sample series of the candidates fitted on every fold."""

    reference: str
    folds: tuple[FoldResult, ...]
    names: tuple[str, ...]  # candidates in the pooled evaluation (fitted on every fold), in given order
    y: np.ndarray  # pooled realized volatility, fold by fold
    ts: np.ndarray
    symbol: np.ndarray
    fold_of_row: np.ndarray  # fold index of each pooled row
    forecasts: dict[str, np.ndarray]  # pooled out-of-sample volatility forecasts
    table: EvaluationTable  # pooled, DM vs the pooled best baseline
    dm_vs_reference: dict[str, DieboldMariano]
    forward_log_return: np.ndarray | None
    fingerprint: str  # sha256 of the windows evaluated (see `windows_fingerprint`)
    n_windows: int
    first_ts: int
    last_ts: int

    def fold_qlike(self, name: str) -> tuple[float, ...]:
        return tuple(f.qlike(name) for f in self.folds)

    def improvement(self, name: str, against: str | None = None) -> float:
        """(against − name) / against pooled QLIKE; positive = `name` is better."""
        ref = self.table.row(against or self.reference).qlike
        return (ref - self.table.row(name).qlike) / ref

    def dm_against(self, against: str) -> dict[str, DieboldMariano]:
        """Pooled QLIKE DM of every candidate against any pooled one (built like the reference's)."""
        if against == self.reference:
            return self.dm_vs_reference
        return diebold_mariano_against(self.y, self.forecasts, against, ts=self.ts)

    def evidence(self, name: str, against: str | None = None) -> CandidateEvidence:
        """What the gate needs about `name`, measured against `against` (default: the reference)."""
        dm = self.dm_against(against or self.reference).get(name)
        return CandidateEvidence(
            name=name,
            pooled_qlike=self.table.row(name).qlike,
            dm_stat=dm.stat if dm else 0.0,
            dm_pvalue=dm.pvalue if dm else 1.0,
            fold_qlike=self.fold_qlike(name),
        )

    def decide(
        self,
        against: str | None = None,
        margin: float = DEFAULT_MARGIN,
        max_pvalue: float = DEFAULT_MAX_PVALUE,
        fold_win_share: float = DEFAULT_FOLD_WIN_SHARE,
        candidates: Sequence[str] | None = None,
    ) -> GateDecision:
        """`gate.choose_champion` on this evidence: every pooled candidate challenges `against`."""
        ref = against or self.reference
        names = [n for n in (self.names if candidates is None else candidates) if n != ref]
        unknown = [n for n in (ref, *names) if n not in self.forecasts]
        if unknown:
            raise KeyError(f"{unknown} are not in the pooled evaluation; have {list(self.names)}")
        return choose_champion(
            self.evidence(ref, ref),
            [self.evidence(n, ref) for n in names],
            margin=margin,
            max_pvalue=max_pvalue,
            fold_win_share=fold_win_share,
        )

    def decide_against_all(
        self,
        references: Sequence[str],
        margin: float = DEFAULT_MARGIN,
        max_pvalue: float = DEFAULT_MAX_PVALUE,
        fold_win_share: float = DEFAULT_FOLD_WIN_SHARE,
    ) -> tuple[str, dict[str, GateDecision]]:
        """(champion, decision per reference) when a challenger must pass the gate against every one of
        `references` — the incumbent champion first, then the best baseline, say. The champion is the
        challenger with the lowest pooled QLIKE among those that pass all; else `references[0]` stays."""
        refs = list(dict.fromkeys(references))
        if not refs:
            raise ValueError("decide_against_all needs at least one reference")
        challengers = [n for n in self.names if n not in refs]
        decisions = {
            r: self.decide(r, margin, max_pvalue, fold_win_share, candidates=challengers) for r in refs
        }
        passing = [
            n
            for n in challengers
            if all(next(v for v in d.verdicts if v.name == n).passed for d in decisions.values())
        ]
        champion = min(passing, key=lambda n: (self.table.row(n).qlike, n)) if passing else refs[0]
        return champion, decisions

    def per_symbol_tables(self) -> dict[str, EvaluationTable]:
        """The pooled out-of-sample series scored per symbol (DM vs that symbol's best baseline)."""
        out = {}
        for sym in sorted({str(s) for s in self.symbol}):
            rows = self.symbol == sym
            out[sym] = evaluate_forecasts(
                self.y[rows], {n: f[rows] for n, f in self.forecasts.items()}, ts=self.ts[rows]
            )
        return out

    def interval_report(self) -> dict[str, dict[str, Any]]:
        """Per candidate with intervals on every fold: pooled coverage of each level (each fold's rows
        scored with that fold's dispersion), holdout vs validation log-residual sd, 99 % VaR breaches."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.names:
            disps = [f.dispersions.get(name) for f in self.folds]
            if any(d is None for d in disps):
                continue
            report: dict[str, Any] = {}
            for level in disps[0].levels:  # type: ignore[union-attr]
                inside = 0.0
                for k, disp in enumerate(disps):
                    rows = self.fold_of_row == k
                    inside += interval_coverage(self.y[rows], self.forecasts[name][rows], disp)[level] * int(
                        rows.sum()
                    )
                report[f"coverage_{round(level * 100)}"] = float(inside / self.y.size)
            report["holdout_log_residual_sd"] = float(np.std(log_residuals(self.y, self.forecasts[name])))
            report["validation_log_residual_sd_mean"] = float(np.mean([d.sd for d in disps]))  # type: ignore[union-attr]
            if self.forward_log_return is not None:
                ok = np.isfinite(self.forward_log_return)
                report["var99_breach_rate"] = var_breach_rate(
                    self.forward_log_return[ok], self.forecasts[name][ok], 0.99
                )
                report["var_assumption"] = VAR_ASSUMPTION
            out[name] = report
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-friendly headline: per candidate pooled QLIKE, fold QLIKEs, vs reference (for metadata)."""
        return {
            "reference": self.reference,
            "fingerprint": self.fingerprint,
            "n_windows": self.n_windows,
            "folds": [
                {
                    "fold": f.fold,
                    "train_windows": f.train_windows,
                    "test_windows": f.test_windows,
                    "test_start_ts": f.test_start_ts,
                    "test_end_ts": f.test_end_ts,
                    "skipped": dict(f.skipped),
                }
                for f in self.folds
            ],
            "candidates": {
                name: {
                    "pooled_qlike": _finite(self.table.row(name).qlike),
                    "fold_qlike": [_finite(q) for q in self.fold_qlike(name)],
                    "improvement_vs_reference": _finite(self.improvement(name)),
                    "dm_pvalue_vs_reference": _finite(self.dm_vs_reference[name].pvalue)
                    if name in self.dm_vs_reference
                    else None,
                }
                for name in self.names
            },
        }


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def score_block(
    y: np.ndarray, forecasts: Mapping[str, np.ndarray], reference: str, ts: np.ndarray
) -> tuple[EvaluationTable, dict[str, DieboldMariano]]:
    """The evaluation table and the DM tests against `reference` of one block of out-of-sample
    forecasts (a fold's test block or the pooled series): one scoring for the walk-forward and for its
    evidence read back from MLflow."""
    return evaluate_forecasts(y, forecasts, ts=ts), diebold_mariano_against(y, forecasts, reference, ts=ts)


def windows_fingerprint(windows: WindowSet) -> str:
    """sha256 over the windows' inputs, targets, times, symbols and column names: the data a result saw."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(windows.feature_columns).encode())
    digest.update(np.ascontiguousarray(windows.X, dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(windows.y, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(windows.ts, dtype=np.int64).tobytes())
    digest.update("\x1f".join(map(str, windows.symbol)).encode())
    return digest.hexdigest()


def forward_log_returns(features: pl.DataFrame, windows: WindowSet) -> np.ndarray:
    """ln(c_{t+h} / c_t) per window (h = the horizon), NaN where bar t+h is not exactly h bars later."""
    h, bar_ms = windows.horizon, windows.bar_ms
    fwd = (
        features.sort("symbol", "ts")
        .with_columns(
            pl.when((pl.col("ts").shift(-h) - pl.col("ts")).over("symbol") == h * bar_ms)
            .then((pl.col("close").shift(-h) / pl.col("close")).log().over("symbol"))
            .alias("fwd_log_ret")
        )
        .select(pl.col("symbol").cast(pl.Utf8), pl.col("ts").cast(pl.Int64), "fwd_log_ret")
    )
    keys = pl.DataFrame(
        {"symbol": windows.symbol.astype(str), "ts": windows.ts}, schema={"symbol": pl.Utf8, "ts": pl.Int64}
    )
    return keys.join(fwd, on=["symbol", "ts"], how="left", maintain_order="left")["fwd_log_ret"].to_numpy()


def candidate_windows(features: pl.DataFrame, timeframe: str = "1h") -> tuple[WindowSet, np.ndarray]:
    """(windows, forward log returns) every default candidate can read, from a features frame.

    `features`: `lib.features.compute_features` output for all symbols together (bars' OHLC
    included); the HAR+ columns are added here unless present (`har_features.har_plus_features`:
    the cross-asset term needs every symbol in one frame). Columns: MODEL_FEATURES + HAR_PLUS_FEATURES.
    """
    from crypto_platform.lib.features import MODEL_FEATURES
    from crypto_platform.lib.model.har_features import HAR_PLUS_FEATURES, har_plus_features
    from crypto_platform.lib.model.windows import build_windows

    if not all(c in features.columns for c in HAR_PLUS_FEATURES):
        features = har_plus_features(features, timeframe)
    windows = build_windows(features, (*MODEL_FEATURES, *HAR_PLUS_FEATURES), timeframe=timeframe)
    return windows, forward_log_returns(features, windows)


def _validation_residuals(model: Any) -> np.ndarray | None:
    residuals = getattr(model, "validation_log_residuals", None)
    return None if residuals is None else np.asarray(residuals, dtype=np.float64)


def walk_forward(
    windows: WindowSet,
    candidates: Sequence[Candidate],
    n_folds: int = 4,
    min_train_frac: float = 0.5,
    reference: str = DEFAULT_REFERENCE,
    forward_log_return: np.ndarray | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    on_fold: Callable[[FoldResult], None] | None = None,
    keep_models: bool = False,
    time_budget_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> WalkForwardResult:
    """Fit and score every candidate on `n_folds` purged expanding folds (see the module docstring).

    `windows`: all symbols pooled, with every column any candidate reads. `forward_log_return`
    (optional, one per window: ln(c_{t+24}/c_t), NaN where unknown) enables the VaR breach rate.
    `on_fold` is called after each fold (progress, logging a nested run).
    `time_budget_s` bounds the wall time: from the second fold on, a candidate whose fit — projected
    from its previous fold's seconds, scaled by the training block's growth — would end past the
    budget is skipped on that fold and every later one, with the reason (so it is out of the pooled
    evaluation and the gate, and the model card says why). The reference is never skipped.
    """
    specs = {c.name: c for c in candidates}
    if len(specs) != len(candidates):
        raise ValueError(f"candidate names must be unique, got {[c.name for c in candidates]}")
    if reference not in specs:
        raise ValueError(f"the reference {reference!r} is not among the candidates {list(specs)}")
    for k, c in enumerate(candidates):
        early = {p.name for p in candidates[:k]}
        missing = [r for r in c.requires if r not in early]
        if missing:
            raise ValueError(f"candidate {c.name!r} requires {missing}, which must come before it")
    if forward_log_return is not None and np.shape(forward_log_return) != (len(windows),):
        raise ValueError(f"forward_log_return must have shape ({len(windows)},)")
    folds = walk_forward_folds(
        windows.ts,
        n_folds=n_folds,
        min_train_frac=min_train_frac,
        purge_bars=windows.horizon,
        bar_ms=windows.bar_ms,
    )
    if not folds:
        raise ValueError("walk_forward: no folds (no windows)")

    results: list[FoldResult] = []
    began = clock()
    over_budget: dict[str, str] = {}  # candidate → why it is no longer fitted
    last_cost: dict[str, tuple[float, int]] = {}  # candidate → (seconds, training windows) of its last fit
    for k, fold in enumerate(folds):
        train, test = windows.take(fold.train), windows.take(fold.test)
        fitted: dict[str, Any] = {}
        seconds: dict[str, float] = {}
        skipped: dict[str, str] = {}
        forecasts: dict[str, np.ndarray] = {}
        for spec in candidates:
            if spec.name in over_budget:
                skipped[spec.name] = over_budget[spec.name]
                continue
            absent = [r for r in spec.requires if r not in fitted]
            if absent:
                skipped[spec.name] = f"needs {absent}, not fitted on this fold"
                continue
            if time_budget_s is not None and spec.name != reference and spec.name in last_cost:
                cost, trained_on = last_cost[spec.name]
                projected = cost * len(train) / max(trained_on, 1)
                elapsed = clock() - began
                if elapsed + projected > time_budget_s:
                    over_budget[spec.name] = skipped[spec.name] = (
                        f"time budget: {elapsed:.0f} s of the walk-forward's {time_budget_s:.0f} s were "
                        f"spent before fold {k}, and its fit there was projected at {projected:.0f} s "
                        f"(fold {k - 1}: {cost:.0f} s); skipped from fold {k} on"
                    )
                    continue
            started = clock()
            try:
                model = spec.fit(train, FoldContext(k, fitted, specs))
            except (ValueError, RuntimeError) as exc:
                if spec.name == reference:
                    raise ValueError(
                        f"fold {k}: the reference {reference!r} could not be fitted: {exc}"
                    ) from exc
                skipped[spec.name] = str(exc)
                continue
            fitted[spec.name] = model
            forecasts[spec.name] = np.asarray(model.predict(test), dtype=np.float64)
            seconds[spec.name] = clock() - started
            last_cost[spec.name] = (seconds[spec.name], len(train))
        dispersions = {}
        for name, model in fitted.items():
            residuals = _validation_residuals(model)
            if residuals is not None and np.isfinite(residuals).sum() >= 20:
                dispersions[name] = fit_dispersion(residuals, levels)
        table, dm = score_block(test.y, forecasts, reference, test.ts)
        result = FoldResult(
            fold=k,
            train_windows=len(train),
            test_windows=len(test),
            test_start_ts=fold.test_start_ts,
            test_end_ts=fold.test_end_ts,
            table=table,
            dm_vs_reference=dm,
            params={n: m.params() if hasattr(m, "params") else {} for n, m in fitted.items()},
            seconds=seconds,
            skipped=skipped,
            dispersions=dispersions,
            forecasts=forecasts,
            models=fitted if keep_models else {},
        )
        results.append(result)
        if on_fold is not None:
            on_fold(result)

    test_rows = [fold.test for fold in folds]
    names = tuple(c.name for c in candidates if all(c.name in r.forecasts for r in results))
    rows = np.concatenate(test_rows)
    pooled = {n: np.concatenate([r.forecasts[n] for r in results]) for n in names}
    y, ts, symbol = windows.y[rows], windows.ts[rows], windows.symbol[rows]
    fold_of_row = np.concatenate([np.full(r.size, k) for k, r in enumerate(test_rows)])
    table, dm = score_block(y, pooled, reference, ts)
    return WalkForwardResult(
        reference=reference,
        folds=tuple(results),
        names=names,
        y=y,
        ts=ts,
        symbol=symbol,
        fold_of_row=fold_of_row,
        forecasts=pooled,
        table=table,
        dm_vs_reference=dm,
        forward_log_return=None if forward_log_return is None else np.asarray(forward_log_return)[rows],
        fingerprint=windows_fingerprint(windows),
        n_windows=len(windows),
        first_ts=int(windows.ts.min()),
        last_ts=int(windows.ts.max()),
    )
