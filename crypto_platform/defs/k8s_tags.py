"""Run tags that size each job's pod under Dagster's K8sRunLauncher (deploy/dagster/values.yaml).

On Kubernetes every run is its own pod; the launcher reads the run's `dagster-k8s/config` tag (a JSON
object, merged over the chart's `runLauncher.config.k8sRunLauncher.runK8sConfig`) for the container's
resources. Walking every candidate forward (TensorFlow residual ensembles, GARCH fits, the HAR+ study)
needs several times the memory of pulling OHLCV and computing features, so each job carries the run
tags of its resource class:

    define_asset_job(MARKET_JOB, ..., run_tags=INGESTION_RUN_TAGS)

`RESOURCE_CLASS_TAG` is also what the run queue limits (QueuedRunCoordinator `tagConcurrencyLimits`):
one training run at a time, whatever asks for it (weekly schedule, drift sensor, launchpad). Elsewhere
(`dagster dev`, docker compose) the tags are inert: only the K8s launcher and the queue read them.
Import-free on purpose (no dagster, no job modules), so the job modules can import it without a cycle.
"""

from __future__ import annotations

import json
from typing import Any

K8S_CONFIG_TAG = "dagster-k8s/config"
RESOURCE_CLASS_TAG = "crypto_platform/resource-class"

# Container resources per class. Limits leave head-room over what a run was seen to need: a run killed
# for memory (OOMKilled) fails the whole run, while an unused limit costs nothing.
RESOURCES_BY_CLASS: dict[str, dict[str, dict[str, str]]] = {
    # market_job: ccxt OHLCV for a range of days, polars features, the quality report.
    "ingestion": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
    # ml_retrain_job: every candidate walked forward on the pooled windows, then promotion and drift.
    "training": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
    # daily_report_job: reads stored results and writes one Markdown file.
    "report": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
}


def k8s_run_tags(resource_class: str) -> dict[str, str]:
    """The run tags of one resource class: the class itself and its `dagster-k8s/config`."""
    resources = RESOURCES_BY_CLASS[resource_class]
    config: dict[str, Any] = {"container_config": {"resources": resources}}
    return {RESOURCE_CLASS_TAG: resource_class, K8S_CONFIG_TAG: json.dumps(config, sort_keys=True)}


INGESTION_RUN_TAGS = k8s_run_tags("ingestion")
TRAINING_RUN_TAGS = k8s_run_tags("training")
REPORT_RUN_TAGS = k8s_run_tags("report")

# Which class each job of the code location belongs to (the job modules own the names; the test of
# deploy/dagster checks this table against the jobs `crypto_platform.definitions.defs` defines).
RUN_TAGS_BY_JOB: dict[str, dict[str, str]] = {
    "market_job": INGESTION_RUN_TAGS,
    "ml_retrain_job": TRAINING_RUN_TAGS,
    "ml_drift_job": INGESTION_RUN_TAGS,
    "daily_report_job": REPORT_RUN_TAGS,
}
