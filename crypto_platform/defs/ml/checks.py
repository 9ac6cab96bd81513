"""Asset checks of the ML group, and the cross-run gate on the `ohlcv` blocking checks.

The two checks judge what their asset recorded in its latest materialization's metadata (the asset
computes, the check decides), so they can also be re-run from the UI without retraining:
- `champion_beats_baselines` (model_promotion): WARN when the champion's candidate does not beat every
  other baseline on pooled out-of-sample QLIKE in the latest run's walk-forward. The gate can leave a
  champion that some baseline edges out without significance (plain HAR stays when no challenger
  passes, though EWMA may score lower); the registry must keep a servable champion, so this never
  blocks: it says a model no better than a baseline is serving.
- `no_feature_drift` (feature_drift): WARN on feature drift. WARN rather than ERROR because the
  response to drift is a retrain (the sensor requests one), not stopping anything: the champion is
  still the best model available, and hourly crypto features shift with every volatility regime.
  ERROR is kept for data that is wrong (the blocking ohlcv checks).
"""

# No `from __future__ import annotations`: Dagster inspects the context and resource annotations.

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    MetadataValue,
    asset_check,
)

CHAMPION_CHECK_DESCRIPTION = (
    "WARN when the champion does not beat every other baseline on pooled out-of-sample QLIKE in the "
    "latest walk-forward: a baseline-level model is serving. Never blocking: the registry must keep a "
    "servable champion."
)
DRIFT_CHECK_DESCRIPTION = (
    "WARN on feature drift between the champion's training window and the latest days; the retrain "
    "sensor answers it. Label drift (realized volatility) is reported in the metadata."
)
PROMOTION_KEY = AssetKey("model_promotion")
DRIFT_KEY = AssetKey("feature_drift")
OHLCV_KEY = AssetKey("ohlcv")


def _latest_metadata(instance: DagsterInstance, key: AssetKey) -> dict:
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@asset_check(asset=PROMOTION_KEY, name="champion_beats_baselines", description=CHAMPION_CHECK_DESCRIPTION)
def champion_beats_baselines(context: AssetCheckExecutionContext) -> AssetCheckResult:
    meta = _latest_metadata(context.instance, PROMOTION_KEY)
    if "champion_beats_baselines" not in meta:
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.WARN, description="model_promotion has not run yet"
        )
    not_beaten = list(meta.get("baselines_not_beaten") or [])
    return AssetCheckResult(
        passed=bool(meta["champion_beats_baselines"]),
        severity=AssetCheckSeverity.WARN,
        description=(
            "the champion beats every other baseline on the walk-forward folds"
            if not not_beaten
            else f"the champion does not beat {', '.join(not_beaten)} on the walk-forward folds"
        ),
        metadata={
            "champion_version": str(meta.get("champion_version")),
            "champion_family": str(meta.get("champion_family")),
            "champion_pooled_qlike": meta.get("champion_pooled_qlike"),
            "baselines_not_beaten": MetadataValue.json(not_beaten),
        },
    )


@asset_check(asset=DRIFT_KEY, name="no_feature_drift", description=DRIFT_CHECK_DESCRIPTION)
def no_feature_drift(context: AssetCheckExecutionContext) -> AssetCheckResult:
    meta = _latest_metadata(context.instance, DRIFT_KEY)
    if "feature_drift_detected" not in meta:
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.WARN, description="feature_drift has not run yet"
        )
    drifted = list(meta.get("drifted_features") or [])
    return AssetCheckResult(
        passed=not meta["feature_drift_detected"],
        severity=AssetCheckSeverity.WARN,
        description=("no feature drift" if not drifted else f"drift in {', '.join(drifted)}")
        + f"; label drift {'detected' if meta.get('label_drift_detected') else 'none'}",
        metadata={
            "drifted_features": MetadataValue.json(drifted),
            "label_drift_detected": bool(meta.get("label_drift_detected")),
            "champion_version": str(meta.get("champion_version")),
        },
    )


ML_ASSET_CHECKS = [champion_beats_baselines, no_feature_drift]


# --------------------------------------------------------------------------------------------------
# Cross-run gate: did the data in the training window pass its blocking checks?
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockingFailure:
    partition: str
    run_id: str
    checks: tuple[str, ...]


def failed_blocking_checks(
    instance: DagsterInstance, partitions: Iterable[str], asset_key: AssetKey = OHLCV_KEY
) -> list[BlockingFailure]:
    """Partitions whose stored bars come from a run where a blocking check of `asset_key` failed.

    The ohlcv checks are evaluated inside the asset, once per run over all the run's partitions (their
    evaluations carry no partition), and the asset is stored before they are evaluated. So the latest
    verdict on a partition's data is the one of the run that last materialised it: for each partition
    in the window, find that run (latest materialisation storage id → record → run id) and look at the
    blocking check evaluations it emitted. A later good re-materialisation clears a partition.
    """
    wanted = set(partitions)
    if not wanted:
        return []
    latest = instance.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_MATERIALIZATION, partitions=wanted
    )
    if not latest:
        return []
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, storage_ids=list(latest.values())), limit=len(latest)
    ).records
    run_of_partition = {r.partition_key: r.run_id for r in records if r.partition_key is not None}
    failed_by_run: dict[str, tuple[str, ...]] = {}
    for run_id in set(run_of_partition.values()):
        failed_by_run[run_id] = _failed_blocking_in_run(instance, run_id, asset_key)
    return [
        BlockingFailure(partition, run_id, failed_by_run[run_id])
        for partition, run_id in sorted(run_of_partition.items())
        if failed_by_run[run_id]
    ]


def _failed_blocking_in_run(instance: DagsterInstance, run_id: str, asset_key: AssetKey) -> tuple[str, ...]:
    """Names of the blocking checks of `asset_key` whose last evaluation in the run failed."""
    verdict: dict[str, bool] = {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data if entry.dagster_event else None
        if evaluation is None or evaluation.asset_key != asset_key or not evaluation.blocking:
            continue
        verdict[evaluation.check_name] = evaluation.passed
    return tuple(sorted(name for name, passed in verdict.items() if not passed))


def describe_failures(failures: Sequence[BlockingFailure], limit: int = 10) -> str:
    shown = "; ".join(
        f"{f.partition} ({', '.join(f.checks)} failed in run {f.run_id[:8]})" for f in failures[:limit]
    )
    more = f" … and {len(failures) - limit} more" if len(failures) > limit else ""
    return shown + more
