"""`crypto-platform materialize`: build the asset graph once, for today and N days of history.

Runs on the current Dagster instance (DAGSTER_HOME, created if missing), so the runs, materialisations
and check results appear in the UI afterwards. Each run covers the whole date range of up to
CRYPTO_REFRESH_BATCH_SYMBOLS consecutive symbols — the rectangle a single-run backfill from the UI
has, launched with the partition-range tags — and `ohlcv` fetches those symbols concurrently, each
with one paginated request sequence. A run that fails for some of its symbols is followed at once by
runs of the healthy symbols without them and of each failing symbol alone (as the batch-split sensor
does for scheduled runs), so one bad pair costs the others a re-run, not their data.

Exit status: 0 when every run succeeded; 1 when a run failed (a failing blocking check fails its run,
so downstream assets were not built); 2 for bad arguments.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from crypto_platform.lib.market.symbols import normalize_symbol
from crypto_platform.settings import MARKET_SOURCES, Settings, get_settings

# The repository's instance config, present in a source checkout (editable install).
REPO_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"


@dataclass
class RunSummary:
    label: str  # the symbols and days of a market run, "unpartitioned" for the whole-history assets
    run_id: str
    success: bool
    split: bool = False  # failed, and its symbols were run again in smaller runs
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    partitions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sources: set[str] = field(default_factory=set)
    checks: list[tuple[str, bool, str, str]] = field(default_factory=list)  # (check, passed, severity, text)
    failures: list[str] = field(default_factory=list)
    headlines: dict[str, str] = field(default_factory=dict)


# What a whole-history asset (a model, a report) says in one line instead of a row count.
HEADLINE_METADATA = (
    "model_version",
    "gate_winner",
    "champion_pooled_qlike",
    "best_baseline",
    "best_baseline_pooled_qlike",
    "promoted",
    "champion_version",
    "champion_family",
    "feature_drift_detected",
    "label_drift_detected",
    "path",
)


def _dagster_home(settings: Settings) -> Path:
    home = Path(settings.dagster_home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    # DagsterInstance.get() reads the variable and wants an absolute path.
    os.environ["DAGSTER_HOME"] = str(home)
    config = home / "dagster.yaml"
    if not config.exists() and REPO_DAGSTER_YAML.exists():
        # What `make` does: a fresh home gets the project's instance config (telemetry off, run queue).
        shutil.copyfile(REPO_DAGSTER_YAML, config)
        click.echo(f"  created {config} from {REPO_DAGSTER_YAML}")
    return home


def _symbols(settings: Settings, requested: str | None) -> list[str]:
    from crypto_platform.lib.market.symbols import InvalidSymbolError, exchange_symbol_id

    configured = [exchange_symbol_id(s) for s in settings.symbols]
    if not requested:
        return configured
    chosen = []
    for raw in requested.split(","):
        if not raw.strip():
            continue
        try:
            symbol_id = exchange_symbol_id(raw)
        except InvalidSymbolError as exc:
            raise click.BadParameter(str(exc), param_hint="--symbols") from exc
        if symbol_id not in configured:
            # The partitions (and so the UI) only know the configured symbols.
            raise click.BadParameter(
                f"{raw.strip()} is not one of the configured symbols {', '.join(configured)}; "
                "add it to CRYPTO_SYMBOLS",
                param_hint="--symbols",
            )
        chosen.append(symbol_id)
    return list(dict.fromkeys(chosen))


def _root_cause(error: Any) -> str:
    """The first error below Dagster's wrappers ("Error occurred while executing op …")."""
    if error is None:
        return "failed"
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    lines = [line for line in error.message.strip().splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else error.cls_name or "failed"


def _summarise(label: str, result: Any) -> RunSummary:
    summary = RunSummary(label=label, run_id=result.run_id, success=result.success)
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            mat = event.event_specific_data.materialization
            asset = mat.asset_key.to_user_string()
            summary.partitions[asset] += 1
            row_count = mat.metadata.get("dagster/row_count")
            if row_count is not None:
                summary.rows[asset] += int(row_count.value)
            facts = [f"{key}={mat.metadata[key].value}" for key in HEADLINE_METADATA if key in mat.metadata]
            if facts:
                summary.headlines[asset] = ", ".join(facts)
            source = mat.metadata.get("source")
            if source is not None:
                summary.sources.add(str(source.value))
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            summary.checks.append(
                (
                    f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}",
                    evaluation.passed,
                    evaluation.severity.value,
                    evaluation.description or "",
                )
            )
        elif event.is_step_failure:
            summary.failures.append(f"{event.step_key}: {_root_cause(event.event_specific_data.error)}")
        elif event.is_step_skipped:
            summary.failures.append(f"{event.step_key}: skipped (an upstream step or blocking check failed)")
    return summary


def _print_summary(summary: RunSummary) -> None:
    status = "OK" if summary.success else ("FAILED: split into smaller runs" if summary.split else "FAILED")
    click.echo(f"  run {summary.run_id}: {status}")
    for asset in sorted(summary.partitions):
        if asset in summary.rows:
            click.echo(
                f"    {asset:<16} {summary.rows[asset]:>8} rows in {summary.partitions[asset]} partition(s)"
            )
        else:
            click.echo(
                f"    {asset:<16} materialized"
                + (f": {summary.headlines[asset]}" if asset in summary.headlines else "")
            )
    if summary.sources:
        click.echo(f"    source: {', '.join(sorted(summary.sources))}")
    for name, passed, severity, text in summary.checks:
        verdict = "passed" if passed else f"FAILED ({severity})"
        click.echo(f"    check {name:<26} {verdict}" + ("" if passed else f": {text}"))
    for failure in summary.failures:
        click.echo(f"    ! {failure}")


@click.command(name="materialize")
@click.option(
    "--source",
    type=click.Choice(MARKET_SOURCES),
    default=None,
    help="Where bars come from; default CRYPTO_MARKET_SOURCE (auto: exchange, else simulator).",
)
@click.option(
    "--days",
    type=click.IntRange(min=0),
    default=None,
    help="Days of history besides today; default CRYPTO_HISTORY_DAYS.",
)
@click.option(
    "--select",
    "selection",
    default="*",
    show_default=True,
    help="Dagster asset selection, e.g. 'group:market' or 'key:ohlcv'.",
)
@click.option("--symbols", default=None, help="Comma-separated subset of the configured symbols.")
@click.option(
    "--model-config",
    type=click.Choice(["fast", "default"]),
    default=None,
    help="Model-selection preset of trained_model: 'fast' (about a minute, for demos and offline runs) or "
    "'default' (4 folds, 30 HAR+ trials, the full residual ensemble); "
    "default: fast when CRYPTO_ML_FAST is set, else default.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show Dagster's INFO log of each run.")
def command(
    source: str | None,
    days: int | None,
    selection: str,
    symbols: str | None,
    model_config: str | None,
    verbose: bool,
) -> None:
    """Materialize the asset graph for today plus N days, many symbols per run."""
    settings = get_settings()
    if source:
        settings = dataclasses.replace(settings, market_source=source)
    symbol_ids = _symbols(settings, symbols)
    history_days = settings.history_days if days is None else days
    home = _dagster_home(settings)

    from dagster import AssetSelection, BetaWarning, DagsterInstance

    from crypto_platform.definitions import build_definitions
    from crypto_platform.defs.market.partitions import market_partitions_def, market_symbol_order
    from crypto_platform.defs.market.run_requests import batch_symbols, failed_symbols, split_failed_batch

    warnings.simplefilter("ignore", BetaWarning)
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    try:
        asset_keys = AssetSelection.from_string(selection).resolve(graph)
    except Exception as exc:  # the selection parser raises several types; all mean a bad --select
        raise click.BadParameter(str(exc), param_hint="--select") from exc
    if not asset_keys:
        raise click.BadParameter(f"{selection!r} selects no asset", param_hint="--select")
    market_pdef = market_partitions_def(settings)
    by_day = sorted((k for k in asset_keys if graph.get(k).partitions_def == market_pdef), key=str)
    whole = sorted((k for k in asset_keys if graph.get(k).partitions_def is None), key=str)
    other = sorted(set(asset_keys) - set(by_day) - set(whole), key=str)
    if other and selection == "*":
        # The whole graph by default: assets on their own partitioning (the daily track record, which has
        # nothing to score before forecasts were served) are left to their automation, and said so.
        click.echo(
            f"  not run here: {', '.join(k.to_user_string() for k in other)} (own partitions; "
            "Dagster's automation materializes them, or the UI)"
        )
        asset_keys = [k for k in asset_keys if k not in set(other)]
        other = []
    if other:
        raise click.BadParameter(
            f"{', '.join(k.to_user_string() for k in other)} have another partitioning; "
            "materialize them from the UI",
            param_hint="--select",
        )

    today = datetime.now(UTC).date()
    first_day = max(today - timedelta(days=history_days), date.fromisoformat(settings.partitions_start))
    assets_text = ", ".join(sorted(k.to_user_string() for k in asset_keys))
    n_days = (today - first_day).days + 1
    click.echo(
        f"Materializing {assets_text} for {first_day} … {today} ({n_days} days), "
        f"symbols {', '.join(symbol_ids)}, source {settings.market_source}"
    )
    click.echo(f"  DAGSTER_HOME {home}\n  data         {settings.data_location}")

    run_config = {"loggers": {"console": {"config": {"log_level": "INFO" if verbose else "WARNING"}}}}
    summaries: list[RunSummary] = []
    with DagsterInstance.get() as instance:
        if by_day:
            job = defs.resolve_implicit_job_def_def_for_assets(by_day)
            pending = batch_symbols(
                {symbol_id: (first_day, today) for symbol_id in symbol_ids},
                market_symbol_order(settings),
                settings.refresh_batch_symbols,
                n_days,
                include_unwanted=False,
            )
            while pending:
                batch = pending.pop(0)
                click.echo(f"▶ {batch.label}")
                result = job.execute_in_process(
                    instance=instance,
                    run_config=run_config,
                    asset_selection=by_day,
                    tags=batch.range_tags(),
                    raise_on_error=False,
                )
                summaries.append(_summarise(batch.label, result))
                if not result.success:
                    parts = split_failed_batch(batch, failed_symbols(result))
                    summaries[-1].split = bool(parts)
                    pending = parts + pending
                _print_summary(summaries[-1])
        if whole and all(s.success or s.split for s in summaries):
            # Unpartitioned assets (whole-history ones, e.g. a model) come after the day partitions
            # they read, in one run.
            click.echo(f"▶ {', '.join(k.to_user_string() for k in whole)}")
            whole_config = dict(run_config)
            if any(k.to_user_string() == "trained_model" for k in whole):
                from crypto_platform.defs.ml.config import training_run_config

                fast = model_config == "fast" if model_config else settings.ml_fast_training
                # Train on the window just materialized (+ today), not the config's default window.
                whole_config.update(
                    training_run_config(
                        fast=fast,
                        training_days=history_days + 1,
                        symbols=[normalize_symbol(s) for s in symbol_ids] if symbols else None,
                    )
                )
            result = defs.resolve_implicit_job_def_def_for_assets(whole).execute_in_process(
                instance=instance, run_config=whole_config, asset_selection=whole, raise_on_error=False
            )
            summaries.append(_summarise("unpartitioned", result))
            _print_summary(summaries[-1])
        elif whole:
            click.echo(f"  skipped {', '.join(k.to_user_string() for k in whole)}: a partitioned run failed")

    failed = [s.label for s in summaries if not s.success and not s.split]
    if failed:
        click.echo(f"FAILED: {len(failed)} of {len(summaries)} run(s) failed ({', '.join(failed)})", err=True)
        sys.exit(1)
    retried = sum(s.split for s in summaries)
    click.echo(
        f"OK: {len(summaries) - retried} run(s) succeeded"
        + (f" ({retried} failed run(s) split and re-run)" if retried else "")
        + ". Open the UI with `make ui`."
    )
