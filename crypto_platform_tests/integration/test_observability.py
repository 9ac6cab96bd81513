"""Alert rules and Grafana dashboards against the metrics the code really emits.

- every metric and label an alert rule or a dashboard query uses is in the real `/metrics` output of the
  API (a real app with the session's champion loaded, after a few requests, its freshness exporter
  refreshed over stored partitions) or among the scorer's metric families (`ScorerMetrics`; the real
  scorer process is scraped in e2e/test_full_stack.py);
- alerts.yml parses and every rule is complete; with promtool installed (Debian's `prometheus` package),
  `promtool check rules` and the unit tests in alerts_test.yml pass.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "ops" / "prometheus"
DASHBOARDS = REPO / "ops" / "grafana" / "dashboards"
# Labels Prometheus adds to every scraped series (target labels) or that histograms carry by construction.
TARGET_LABELS = {"job", "instance"}
SYNTHETIC_METRICS = {"up"}

_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_METRIC = re.compile(r"\b((?:crypto_[a-z0-9_]+)|up)\b(?!\s*\()")
_LEGEND = re.compile(r"\{\{\s*\.?([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
_TEMPLATE_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")


# --- what the code emits --------------------------------------------------------------------------------


def parse_exposition(text: str) -> dict[str, set[str]]:
    """Sample name → label names seen on it, from Prometheus text format."""
    found: dict[str, set[str]] = defaultdict(set)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        if rest:
            labels = re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', rest.rsplit("}", 1)[0])
            found[name].update(labels)
        else:
            found[line.split(" ", 1)[0]].update(())
    return found


@pytest.fixture
def api_metrics(make_api_client, api_settings, api_champion, api_data_dir) -> dict[str, set[str]]:
    """The API's real /metrics after a few requests, a loaded champion and a freshness refresh."""
    from crypto_platform.lib.storage import LocalStore
    from serving.api.freshness import FreshnessExporter, registry_champion_lookup

    settings = api_settings(mlflow_uri=api_champion.tracking_uri, rate_limit_per_minute=0)
    client = make_api_client(settings, start_model_poller=True)
    assert client.get("/ready").status_code == 200
    for symbol in ("BTC/USDT", "ETH/USDT"):
        assert client.post("/v1/crypto/signal", json={"symbol": symbol}).status_code == 200
        assert client.post("/v1/crypto/ml-signal", json={"symbol": symbol}).status_code == 200
    assert client.get("/v1/crypto/ohlcv", params={"symbol": "BTCUSDT", "limit": 3}).status_code == 200
    assert client.get("/v1/no-such-route").status_code == 404
    # What the ML group leaves for the model-evidence gauges: a track record and a drift report, in the
    # shapes the assets write (lib.track_record / lib.drift to_dict).
    from crypto_platform.lib.storage import drift_report_key, track_record_key
    from crypto_platform_tests.unit.test_model_evidence_gauges import track_record

    store = LocalStore(api_data_dir)
    store.write_bytes(track_record_key("2025-03-07"), json.dumps(track_record(0.6, 0.5).to_dict()).encode())
    drift = {"feature_drift_detected": False, "label_drift_detected": False, "drifted_features": []}
    store.write_bytes(drift_report_key("2025-03-07"), json.dumps(drift).encode())
    # The exporter publishes into the default registry the API's /metrics serves (as app.py wires it).
    exporter = FreshnessExporter(
        LocalStore(api_data_dir),
        ("BTC/USDT", "ETH/USDT"),
        registry_champion_lookup(api_champion.tracking_uri, api_champion.model_name, "champion"),
    )
    snapshot = exporter.refresh()
    assert not snapshot.errors and snapshot.champion_registered_ms
    response = client.get("/metrics")
    assert response.status_code == 200
    return parse_exposition(response.text)


def scorer_metric_families() -> dict[str, set[str]]:
    """Sample names and label names of the scorer's metrics, from its own registry.

    A labelled counter has no samples before its first increment, so the label names come from the
    metric objects (`_labelnames`); the real scorer's output is checked in e2e/test_full_stack.py.
    """
    from prometheus_client.metrics import MetricWrapperBase

    from serving.stream.metrics import ScorerMetrics

    metrics = ScorerMetrics()
    found: dict[str, set[str]] = {}
    for attr in vars(metrics).values():
        if not isinstance(attr, MetricWrapperBase):
            continue
        labels = set(attr._labelnames)
        kind = attr._type
        base = attr._name
        if kind == "counter":
            found[f"{base}_total"] = labels
        elif kind == "histogram":
            found.update({f"{base}_bucket": labels | {"le"}, f"{base}_count": labels, f"{base}_sum": labels})
        else:
            found[base] = labels
    return found


# --- what the rules and dashboards use --------------------------------------------------------------------


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, expr, legendFormat) of every panel target of every dashboard."""
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                queries.append(
                    (f"{path.name}:{panel['title']}", target["expr"], target.get("legendFormat", ""))
                )
    return queries


def uses(expr: str, extra_labels: set[str]) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metrics, labels per selected metric, labels of the whole expression) an expression uses."""
    metrics = set(_METRIC.findall(expr))
    selected: dict[str, set[str]] = defaultdict(set)
    for name, matchers in _SELECTOR.findall(expr):
        selected[name].update(_MATCHER.findall(matchers))
    grouped = {
        label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()
    }
    return metrics, selected, grouped | extra_labels


def check(where: str, expr: str, extra_labels: set[str], emitted: dict[str, set[str]]) -> list[str]:
    problems = []
    metrics, selected, loose_labels = uses(expr, extra_labels)
    if not metrics:
        problems.append(f"{where}: no metric in {expr!r}")
    for metric in metrics - SYNTHETIC_METRICS:
        if metric not in emitted:
            problems.append(f"{where}: {metric} is not emitted")
    for metric, labels in selected.items():
        if metric in SYNTHETIC_METRICS:
            continue
        for label in labels - TARGET_LABELS:
            if label not in emitted.get(metric, set()):
                problems.append(f"{where}: {metric} has no label {label!r}")
    for label in loose_labels - TARGET_LABELS - {"le"}:
        if not any(label in emitted.get(m, set()) for m in metrics):
            problems.append(f"{where}: none of {sorted(metrics)} has label {label!r}")
    return problems


# --- tests --------------------------------------------------------------------------------------------------


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert len(rules) >= 10
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["expr"].strip() and rule["labels"]["severity"] in ("critical", "warning", "info"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    tested = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    covered = {t["alertname"] for case in tested["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert covered == set(names), f"alerts without a firing unit test: {set(names) - covered}"


def test_alert_jobs_are_scrape_jobs() -> None:
    jobs = {
        job["job_name"]
        for job in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    }
    used = {job for rule in alert_rules() for job in re.findall(r'job="([^"]+)"', rule["expr"])}
    used |= {job for _, expr, _ in dashboard_queries() for job in re.findall(r'job="([^"]+)"', expr)}
    assert used and used <= jobs, used - jobs


def test_every_metric_and_label_used_is_emitted(api_metrics: dict[str, set[str]]) -> None:
    # the real API output holds what the dashboards need from it
    assert {"crypto_api_requests_total", "crypto_api_ml_predictions_total"} <= set(api_metrics)
    assert {"symbol", "model_version"} <= api_metrics["crypto_api_ml_predictions_total"]
    assert "crypto_pipeline_last_bar_timestamp_seconds" in api_metrics
    emitted = {**scorer_metric_families(), **api_metrics}
    problems = []
    for rule in alert_rules():
        template_labels = {
            label for text in rule["annotations"].values() for label in _TEMPLATE_LABEL.findall(text)
        }
        problems += check(f"alert {rule['alert']}", rule["expr"], template_labels, emitted)
    for where, expr, legend in dashboard_queries():
        problems += check(where, expr, set(_LEGEND.findall(legend)), emitted)
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_wrong_name_or_label() -> None:
    emitted = {"crypto_api_requests_total": {"path", "status_code"}}
    assert check("x", "rate(crypto_api_requests_total[5m])", set(), emitted) == []
    assert check("x", "rate(crypto_api_request_total[5m])", set(), emitted)
    assert check("x", 'crypto_api_requests_total{status="500"}', set(), emitted)
    assert check("x", "sum by (route) (crypto_api_requests_total)", set(), emitted)
    assert check("x", "crypto_api_requests_total", {"symbol"}, emitted)


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return promtool


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [_promtool(), "check", "rules", str(PROMETHEUS / "alerts.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass() -> None:
    done = subprocess.run(
        [_promtool(), "test", "rules", str(PROMETHEUS / "alerts_test.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_prometheus_config(tmp_path: Path) -> None:
    """prometheus.yml as the container sees it: its rule file at the path compose mounts it to."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    done = subprocess.run([_promtool(), "check", "config", str(local)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
