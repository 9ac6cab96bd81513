"""deploy/dagster/values.yaml: the Kubernetes Job dagster-k8s's K8sRunLauncher creates for each job.

Offline, with dagster-k8s's own code: the launcher is built by a Dagster instance from the run-launcher
config the official chart writes for these values (mirroring its `dagsterYaml.runLauncher.k8s` and
`dagsterUserDeployments.k8sContainerContext` templates), the code location's container context and the
run's `dagster-k8s/config` tag are merged as `K8sContainerContext.create_for_run` merges them, and
`construct_dagster_k8s_job` builds the Job, which kubernetes-validate checks (strict, bundled schemas).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster import DagsterRun, instance_for_test
from dagster_k8s import DagsterK8sJobConfig, K8sRunLauncher, construct_dagster_k8s_job
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import get_job_name_from_run_id, get_user_defined_k8s_config

from crypto_platform.defs.k8s_tags import (
    K8S_CONFIG_TAG,
    RESOURCE_CLASS_TAG,
    RESOURCES_BY_CLASS,
    RUN_TAGS_BY_JOB,
    k8s_run_tags,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((REPO / "deploy" / "dagster" / "values.yaml").read_text())
COMPOSE_INSTANCE = yaml.safe_load((REPO / "docker" / "dagster" / "dagster.yaml").read_text())
RELEASE, NAMESPACE = "dagster", "crypto"
KUBE_VERSION = kubernetes_validate.latest_version()
DEPLOYMENT = VALUES["dagster-user-deployments"]["deployments"][0]
IMAGE = f"{DEPLOYMENT['image']['repository']}:{DEPLOYMENT['image']['tag']}"


def chart_run_launcher_config(kubeconfig: Path) -> dict[str, Any]:
    """The `run_launcher` block the chart writes into dagster.yaml, except that the launcher reads a
    kubeconfig file instead of the in-cluster service account (there is no cluster here)."""
    launcher = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s = launcher.get("runK8sConfig") or {}
    snake = {
        "containerConfig": "container_config",
        "podSpecConfig": "pod_spec_config",
        "podTemplateSpecMetadata": "pod_template_spec_metadata",
        "jobSpecConfig": "job_spec_config",
        "jobMetadata": "job_metadata",
    }
    config = {
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
        "job_namespace": launcher.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": VALUES["global"]["serviceAccountName"],
        "dagster_home": VALUES["global"]["dagsterHome"],
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": VALUES["global"]["postgresqlSecretName"],
        "run_k8s_config": {snake[k]: v for k, v in run_k8s.items()},
    }
    if launcher.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    for key, name in (("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")):
        if launcher.get(key):
            config[name] = [item["name"] for item in launcher[key]]
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def chart_code_location_context() -> dict[str, Any]:
    """What the chart hands the code server as its container context (includeConfigInLaunchedRuns)."""
    assert DEPLOYMENT["includeConfigInLaunchedRuns"]["enabled"] is True
    k8s: dict[str, Any] = {
        "image_pull_policy": DEPLOYMENT["image"]["pullPolicy"],
        "env_config_maps": [
            f"{RELEASE}-dagster-user-deployments-{DEPLOYMENT['name']}-user-env",
            *(item["name"] for item in DEPLOYMENT.get("envConfigMaps", [])),
        ],
        "namespace": NAMESPACE,
        "service_account_name": VALUES["global"]["serviceAccountName"],
        "env": DEPLOYMENT.get("env", []),
    }
    if DEPLOYMENT.get("resources"):
        k8s["resources"] = DEPLOYMENT["resources"]
    return {"k8s": k8s}


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory):
    # A kubeconfig is only parsed when the launcher is built; nothing connects to this address.
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "offline", "user": {"token": "unused"}}],
                "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}],
                "current-context": "offline",
            }
        )
    )
    # The instance validates the config against K8sRunLauncher's schema and builds the launcher from it.
    with instance_for_test(overrides={"run_launcher": chart_run_launcher_config(kubeconfig)}) as instance:
        run_launcher = instance.run_launcher
        assert isinstance(run_launcher, K8sRunLauncher)
        yield run_launcher


def run_worker_job(launcher: K8sRunLauncher, job_name: str, tags: dict[str, str]) -> dict[str, Any]:
    """The Job `K8sRunLauncher.launch_run` would create for a run of `job_name` carrying `tags`."""
    run = DagsterRun(job_name=job_name, tags=tags)
    launcher_context = K8sContainerContext.create_for_run(
        DagsterRun(job_name=job_name), launcher, include_run_tags=False
    )
    user_context = K8sContainerContext.create_from_config(chart_code_location_context()).merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(run.tags))
    )
    context = launcher_context.merge(user_context)
    job_config = context.get_k8s_job_config(job_image=IMAGE, run_launcher=launcher)
    assert isinstance(job_config, DagsterK8sJobConfig)
    name = get_job_name_from_run_id(run.run_id)
    job = construct_dagster_k8s_job(
        job_config=job_config,
        # the launcher's serialized ExecuteRunArgs: opaque to Kubernetes
        args=["dagster", "api", "execute_run", json.dumps({"run_id": run.run_id})],
        job_name=name,
        pod_name=name,
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": job_name, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": job_name}],
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


# --- the Job of each resource class -----------------------------------------------------------------


@pytest.mark.parametrize("resource_class", sorted(RESOURCES_BY_CLASS))
def test_run_worker_job_of_each_class_is_valid_and_sized(
    launcher: K8sRunLauncher, resource_class: str
) -> None:
    job_name = next(name for name, tags in RUN_TAGS_BY_JOB.items() if tags == k8s_run_tags(resource_class))
    job = run_worker_job(launcher, job_name, k8s_run_tags(resource_class))
    kubernetes_validate.validate(job, KUBE_VERSION, strict=True)

    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["resources"] == RESOURCES_BY_CLASS[resource_class]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    assert job["metadata"]["labels"]["dagster/job"] == job_name
    # the platform environment and the credentials travel from the code location to every run pod
    config_maps = {s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s}
    assert "crypto-platform-env" in config_maps
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["key"] == "S3_ACCESS_KEY"
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dagster-postgresql-secret"
    assert env["DAGSTER_HOME"]["value"] == VALUES["global"]["dagsterHome"]
    # run pods batch their event writes as compose's run workers do
    compose_env = yaml.safe_load((REPO / "docker-compose.yml").read_text())["x-dagster-env"]
    assert env["DAGSTER_EVENT_BATCH_SIZE"]["value"] == compose_env["DAGSTER_EVENT_BATCH_SIZE"]


def test_training_gets_more_memory_and_cpu_than_ingestion(launcher: K8sRunLauncher) -> None:
    def limits(job_name: str) -> dict[str, str]:
        job = run_worker_job(launcher, job_name, RUN_TAGS_BY_JOB[job_name])
        return job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]

    training, ingestion = limits("ml_retrain_job"), limits("market_job")
    assert _memory_bytes(training["memory"]) >= 2 * _memory_bytes(ingestion["memory"])
    assert float(training["cpu"]) > float(ingestion["cpu"])


def test_an_untagged_run_gets_the_code_locations_resources(launcher: K8sRunLauncher) -> None:
    # e.g. an ad-hoc materialization from the asset graph (`__ASSET_JOB`)
    job = run_worker_job(launcher, "__ASSET_JOB", {})
    kubernetes_validate.validate(job, KUBE_VERSION, strict=True)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == DEPLOYMENT["resources"]


# --- the jobs of the code location ----------------------------------------------------------------------


def test_every_job_of_the_code_location_has_a_resource_class() -> None:
    from crypto_platform.definitions import defs

    names = {job.name for job in defs.jobs or []}
    assert names == set(RUN_TAGS_BY_JOB)


def test_every_job_carries_its_k8s_run_tags() -> None:
    from crypto_platform.definitions import defs

    for job in defs.jobs or []:
        run_tags = dict(job.run_tags or job.tags or {})
        assert {k: run_tags.get(k) for k in (RESOURCE_CLASS_TAG, K8S_CONFIG_TAG)} == RUN_TAGS_BY_JOB[job.name]


# --- the rest of the values file --------------------------------------------------------------------------


def test_run_queue_limits_every_resource_class() -> None:
    queue = VALUES["dagsterDaemon"]["runCoordinator"]
    assert queue["enabled"] and queue["type"] == "QueuedRunCoordinator"
    config = queue["config"]["queuedRunCoordinator"]
    assert config["maxConcurrentRuns"] == COMPOSE_INSTANCE["run_queue"]["max_concurrent_runs"]
    limits = {(lim["key"], lim["value"]): lim["limit"] for lim in config["tagConcurrencyLimits"]}
    assert set(limits) == {(RESOURCE_CLASS_TAG, c) for c in RESOURCES_BY_CLASS}
    assert limits[RESOURCE_CLASS_TAG, "training"] == 1


def test_storage_is_external_postgres_and_s3_compute_logs_like_the_compose_instance() -> None:
    assert VALUES["postgresql"]["enabled"] is False and VALUES["generatePostgresqlPasswordSecret"] is False
    assert VALUES["postgresql"]["postgresqlDatabase"] == "dagster"
    assert "postgresqlPassword" not in VALUES["postgresql"], "the password comes from an existing Secret"
    logs = VALUES["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager"
    s3 = logs["config"]["s3ComputeLogManager"]
    compose = COMPOSE_INSTANCE["compute_logs"]["config"]
    assert s3["prefix"] == compose["prefix"] and s3["uploadInterval"] == compose["upload_interval"]
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"


def test_code_location_loads_the_same_definitions_as_compose() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["dagster-code"]["command"]
    args = DEPLOYMENT["dagsterApiGrpcArgs"]
    for flag in ("--module-name", "--attribute"):
        assert args[args.index(flag) + 1] == compose[compose.index(flag) + 1]
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in DEPLOYMENT["env"] if "valueFrom" in e}
    chart_values = yaml.safe_load((REPO / "deploy/helm/crypto-platform/values.yaml").read_text())
    assert secrets == {chart_values["existingSecret"]}
    assert all("value" not in e or "KEY" not in e["name"] for e in DEPLOYMENT["env"])
