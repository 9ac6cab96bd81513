"""Serving latency and throughput: the Litestar API vs a bare Litestar app and `mlflow models serve`,
same model, same run.

Set-up (all local, nothing reaches the network): simulated BTC/USDT and ETH/USDT bars for 40 days up to
the last closed hour, stored the way the pipeline stores them; an LSTM forecaster of the default
production shape (2 LSTM layers × 32 units, 12 features, 48 bars; weights drawn at random: speed does
not depend on them) logged with lib.model.packaging and registered as `crypto-volatility@champion` in a
SQLite-backed MLflow registry. Three servers on loopback, one uvicorn worker each:

  * the API (`serving.api.app:create_app_from_env` under uvicorn), which for every ml-signal request
    runs its middleware (security headers, request metrics, JSON depth, the /v1 key rule; the rate
    limit only with `--rate-limit`), validates the input, looks up cached features and the forecast
    (both memoised per last closed bar and model version: the forward pass runs once per bar close or
    model swap, as in production where clients poll between closes; benchmarks/inference.py times the
    pass itself), takes the answer's pre-encoded body with the time spliced in, and queues it for the
    SQLite history;
  * `mlflow models serve --env-manager local` on the same registered model, sent the ready-made 48×12
    window as JSON (it does less work per request: no features, no history);
  * the framework's ceiling: a bare Litestar app (`benchmarks/bare_litestar.py`) under the same uvicorn
    flags, answering the same ml-signal request with the API's own response (captured from the API at
    the start of the run) and doing nothing else. `ratios.ml_signal_vs_bare_c16` is the API's share of
    what Litestar itself can serve on this machine in this run (goal: >= 0.5).

Load comes from `wrk` (a C load generator, Debian package `wrk`) when it is installed: 1 and 16
keep-alive connections for a fixed time each after a warm-up. Without it (or with `--client python`),
from Python threads on http.client, a bounded number of requests each; those threads hold the GIL
and share this machine's cores with the servers, so at 16 clients they measure the client as much as
the server. Either way both servers get the same load, so the ratios compare like with like. With wrk,
each measurement also reports the server's CPU time per request (`cpu_us_per_req`, from /proc), and
`ratios.ml_signal_vs_bare_cpu_c16` is bare's CPU per request over the API's: on a machine other
processes load, the steadier figure.

    .venv/bin/python benchmarks/serving.py [--client auto|wrk|python] [--seconds 8]
        [--requests 400] [--concurrent-requests 60] [--no-mlflow] [--server serve|plain] [--rounds 1]
        [--rate-limit 0]

`--no-mlflow` leaves out `mlflow models serve` (its start-up is most of a short run's wall time).
`--rounds N` measures every server N times, interleaved, and reports the median run (and the ratio to
the bare app as the median of the per-round ratios): on a shared machine, use 3 or more.
`api_gc`: the API process's garbage collections over the whole run (its `crypto_api_gc_pause_seconds`):
per generation and over all how many, their total and how many stopped the loop for more than 10 and
25 ms, and how many
objects its start-up froze out of the collector's generations (`serving.core.gc_pauses`).
`--server serve` (default) runs both uvicorn apps with `crypto-platform serve`'s connection settings
(benchmarks/run_app.py); `plain` with `python -m uvicorn`'s defaults, as the numbers of issue 17 were.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
from gc_histogram import gc_pauses  # this folder, on sys.path as the script's own
from prometheus_client.parser import text_string_to_metric_families

from crypto_platform.devtools.ports import free_port

HOUR_MS = 3_600_000
SYMBOLS = ("BTC/USDT", "ETH/USDT")
MODEL = "crypto-volatility"


def write_store(root: Path, end_ms: int, days: int = 40) -> pl.DataFrame:
    from crypto_platform.lib.features import compute_features
    from crypto_platform.lib.market.simulator import simulate_ohlcv
    from crypto_platform.lib.storage import ohlcv_key, open_store, with_day_column, write_parquet

    store = open_store(str(root))
    frames = []
    for symbol in SYMBOLS:
        bars = simulate_ohlcv(symbol, "1h", end_ms - days * 24 * HOUR_MS, end_ms)
        frames.append(bars.with_columns(pl.lit(symbol).alias("symbol"), pl.lit("simulated").alias("source")))
    ohlcv = pl.concat(frames)
    for (symbol, day), part in with_day_column(ohlcv, "__day").group_by("symbol", "__day"):
        write_parquet(store, ohlcv_key(symbol, day), part.drop("__day").sort("ts"))
    return compute_features(ohlcv.filter(pl.col("symbol") == "BTC/USDT").drop("source"), "1h")


def register_model(tracking_uri: str, artifacts: Path, features: pl.DataFrame) -> tuple[str, np.ndarray]:
    import mlflow
    from mlflow import MlflowClient

    from crypto_platform.lib.features import MODEL_FEATURES
    from crypto_platform.lib.model import registry
    from crypto_platform.lib.model.inference import FastVolatilityPredictor, LSTMWeights
    from crypto_platform.lib.model.packaging import FAST_LSTM_CLASS, log_forecaster
    from crypto_platform.lib.model.windows import latest_window

    window = latest_window(features, MODEL_FEATURES).X
    rng = np.random.default_rng(0)
    n, units = len(MODEL_FEATURES), 32

    def layer(n_in: int) -> LSTMWeights:
        return LSTMWeights(
            rng.normal(0, 0.2, (n_in, 4 * units)), rng.normal(0, 0.2, (units, 4 * units)), np.zeros(4 * units)
        )

    ready = features.drop_nulls(list(MODEL_FEATURES)).select(MODEL_FEATURES).to_numpy()
    predictor = FastVolatilityPredictor(
        mean=ready.mean(axis=0),
        std=ready.std(axis=0) + 1e-6,
        lstm_layers=[layer(n), layer(units)],
        dense_kernel=rng.normal(0, 0.1, (units, 1)),
        dense_bias=np.array([-8.0]),
        sequence_length=48,
        feature_columns=MODEL_FEATURES,
    )
    mlflow.set_tracking_uri(tracking_uri)
    # Artifacts beside the temporary registry, not in ./mlruns of the working directory.
    experiment = MlflowClient(tracking_uri).create_experiment(
        "serving-benchmark", artifact_location=artifacts.as_uri()
    )
    mlflow.set_experiment(experiment_id=experiment)
    with mlflow.start_run() as run:
        info = log_forecaster(predictor, "model", window, FAST_LSTM_CLASS)
    client = MlflowClient(tracking_uri)
    version = registry.register_version(
        client, info.model_uri, run.info.run_id, {"model_family": "lstm", "timeframe": "1h"}
    )
    registry.move_alias(client, registry.CHAMPION, version.version)
    return version.version, window


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_http(port: int, path: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server on {port} not ready: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY")
done = function(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format('{"p50_us": %d, "p99_us": %d, "requests": %d, "errors": %d, ' ..
    '"duration_us": %d}\\n',
    latency:percentile(50), latency:percentile(99), summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, summary.duration))
end
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_wrk(
    port: int,
    path: str,
    body: bytes,
    clients: int,
    seconds: int,
    script: Path,
    warm_up: bool = True,
    server_pid: int | None = None,
) -> dict:
    """p50 / p99 latency (ms) and requests per second from wrk: one thread, `clients` connections.
    With `server_pid`, also the server's CPU time per request (µs): unlike req/s, it hardly moves
    when other processes compete for the cores, so it is the steadier comparison on a shared machine."""
    url = f"http://127.0.0.1:{port}{path}"
    env = {**os.environ, "BENCH_BODY": body.decode()}
    base = ["wrk", "-t1", f"-c{clients}", "-s", str(script), "--timeout", "10s"]
    if warm_up:
        subprocess.run([*base, "-d2s", url], env=env, capture_output=True, check=True)
    cpu_before = cpu_seconds(server_pid) if server_pid else 0.0
    done = subprocess.run([*base, f"-d{seconds}s", url], env=env, capture_output=True, text=True, check=True)
    cpu = cpu_seconds(server_pid) - cpu_before if server_pid else None
    stats = json.loads(done.stderr.strip().splitlines()[-1])
    per_request = (
        {"cpu_us_per_req": round(cpu / stats["requests"] * 1e6, 1)} if cpu and stats["requests"] else {}
    )
    return {
        **per_request,
        "clients": clients,
        "requests": stats["requests"],
        "errors": stats["errors"],
        "p50_ms": round(stats["p50_us"] / 1000, 3),
        "p99_ms": round(stats["p99_us"] / 1000, 3),
        "req_per_s": round(stats["requests"] / (stats["duration_us"] / 1e6), 1),
    }


def api_gc_pauses(port: int) -> dict:
    """The API's garbage collections over the whole run, from its /metrics (`gc_histogram.gc_pauses`),
    and the objects frozen at its start-up."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    frozen = next(
        (
            int(family.samples[0].value)
            for family in text_string_to_metric_families(text)
            if family.name == "crypto_api_gc_frozen_objects" and family.samples
        ),
        0,
    )
    return {"frozen_objects": frozen, **gc_pauses(text, "crypto_api_gc_pause_seconds")}


def load(port: int, path: str, body: bytes, clients: int, per_client: int, warmup: int = 20) -> dict:
    """p50 / p99 latency (ms) and requests per second with `clients` threads, keep-alive connections."""
    latencies: list[float] = []
    errors: list[int] = []
    barrier = threading.Barrier(clients + 1)
    headers = {"content-type": "application/json"}

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(warmup):
            conn.request("POST", path, body, headers)
            conn.getresponse().read()
        barrier.wait()
        mine = []
        for _ in range(per_client):
            started = time.perf_counter()
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                errors.append(response.status)
        latencies.extend(mine)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(ordered),
        "errors": len(errors),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 3),
        "req_per_s": round(len(ordered) / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests measured with one client")
    parser.add_argument(
        "--concurrent-requests", type=int, default=60, help="requests per client at 16 clients"
    )
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--seconds", type=int, default=8, help="measured seconds per wrk run")
    parser.add_argument("--no-mlflow", action="store_true", help="skip the mlflow models serve baseline")
    parser.add_argument("--rounds", type=int, default=1, help="measurements per server, interleaved")
    parser.add_argument("--rate-limit", type=int, default=0, help="the API's CRYPTO_API_RATE_LIMIT (0: off)")
    parser.add_argument(
        "--server",
        choices=("serve", "plain"),
        default="serve",
        help="serve: crypto-platform serve's uvicorn settings; plain: python -m uvicorn defaults",
    )
    args = parser.parse_args()
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"

    root = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    end = int(time.time() * 1000) // HOUR_MS * HOUR_MS
    features = write_store(root / "data", end)
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    version, window = register_model(tracking_uri, root / "artifacts", features)

    env = {
        **os.environ,
        "CRYPTO_DATA_LOCATION": str(root / "data"),
        "CRYPTO_SYMBOLS": ",".join(SYMBOLS),
        "CRYPTO_MARKET_SOURCE": "simulated",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "CRYPTO_API_HISTORY_URL": f"sqlite:///{root / 'history.db'}",
        # Off by default (one wrk client would spend a per-minute budget in a blink); `--rate-limit N`
        # turns it on with a budget no run exhausts, to measure what the limiter costs per request.
        "CRYPTO_API_RATE_LIMIT": str(args.rate_limit),
        "CRYPTO_API_MODEL_POLL_S": "0",
        # `mlflow models serve` runs `uvicorn` from PATH: the venv's, like an activated environment.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    api_port, mlflow_port, bare_port = free_port(), free_port(), free_port()
    bin_dir = Path(sys.executable).parent

    def uvicorn_args(factory: str, port: int) -> list[str]:
        """One server set-up for the API and the bare app: the comparison is the app, nothing else.
        `serve`: `crypto-platform serve`'s connection settings (h11 with the header deadline, no proxy
        headers); `plain`: `python -m uvicorn`'s defaults (httptools, proxy headers from 127.0.0.1)."""
        if args.server == "serve":
            return [sys.executable, "-m", "benchmarks.run_app", factory, str(port)]
        return [
            sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip

    api = start(uvicorn_args("serving.api.app:create_app_from_env", api_port), env, root / "api.log")
    servers = [api]
    try:
        if not args.no_mlflow:
            servers.append(
                start(
                    [
                        str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
                        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(mlflow_port),
                        "--workers", "1",
                    ],
                    env,
                    root / "mlflow-serve.log",
                )
            )  # fmt: skip
        wait_http(api_port, "/ready", api, root / "api.log")
        ml_body = json.dumps({"symbol": "BTC/USDT"}).encode()
        # The bare app serves what the API serves: one real answer, captured now.
        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=30)
        conn.request("POST", "/v1/crypto/ml-signal", ml_body, {"content-type": "application/json"})
        answer = conn.getresponse()
        served = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"ml-signal answered {answer.status}: {served[:500]!r}")
        bare_env = {**env, "BENCH_ML_SIGNAL_BODY": served.decode()}
        bare_app = uvicorn_args("benchmarks.bare_litestar:create_app", bare_port)
        bare = start(bare_app, bare_env, root / "bare.log")
        servers.append(bare)
        wait_http(bare_port, "/health", bare, root / "bare.log")
        if not args.no_mlflow:
            wait_http(mlflow_port, "/health", servers[1], root / "mlflow-serve.log")
        signal_body = json.dumps({"symbol": "BTC/USDT"}).encode()
        mlflow_body = json.dumps({"inputs": window.tolist()}).encode()
        targets = [
            ("api_ml_signal", api_port, "/v1/crypto/ml-signal", ml_body),
            ("bare_litestar", bare_port, "/v1/crypto/ml-signal", ml_body),
            ("api_signal", api_port, "/v1/crypto/signal", signal_body),
        ]
        if not args.no_mlflow:
            targets.append(("mlflow_serve", mlflow_port, "/invocations", mlflow_body))
        script = root / "post.lua"
        script.write_text(WRK_SCRIPT)
        pids = {api_port: api.pid, bare_port: bare.pid}  # uvicorn serves in the started process itself
        # runs[name][key]: one measurement per round. Rounds interleave the servers (their order turns
        # each round), so a neighbour's load on a shared machine falls on all of them alike.
        runs: dict[str, dict[str, list[dict]]] = {name: {} for name, *_ in targets}
        for round_no in range(args.rounds):
            for clients, per_client in ((1, args.requests), (16, args.concurrent_requests)):
                key = f"c{clients}"
                turn = round_no % len(targets)
                for name, port, path, body in targets[turn:] + targets[:turn]:
                    if client == "wrk":
                        pid = pids.get(port)
                        measured = load_wrk(
                            port, path, body, clients, args.seconds, script, round_no == 0, pid
                        )
                    else:
                        measured = load(port, path, body, clients, per_client)
                    runs[name].setdefault(key, []).append(measured)
        api_gc = api_gc_pauses(api_port)
    finally:
        for server in servers:
            stop(server)
        shutil.rmtree(root, ignore_errors=True)

    def ratio(a: float, b: float) -> float:
        return round(a / b, 2) if b else float("nan")

    def median_run(measured: list[dict]) -> dict:
        ordered = sorted(measured, key=lambda m: m["req_per_s"])
        return {**ordered[(len(ordered) - 1) // 2], "rounds_req_per_s": [m["req_per_s"] for m in measured]}

    results = {name: {key: median_run(m) for key, m in by_key.items()} for name, by_key in runs.items()}
    ml, bare = results["api_ml_signal"], results["bare_litestar"]
    # Per round (the two measured minutes apart at most), then the median of the rounds.
    per_round = {
        key: [
            ratio(a["req_per_s"], b["req_per_s"])
            for a, b in zip(runs["api_ml_signal"][key], runs["bare_litestar"][key], strict=True)
        ]
        for key in ("c1", "c16")
    }
    ratios = {
        "ml_signal_vs_bare_c1": statistics.median(per_round["c1"]),
        "ml_signal_vs_bare_c16": statistics.median(per_round["c16"]),
        "ml_signal_vs_bare_per_round": per_round,
    }
    if client == "wrk":
        # Bare's CPU per request over the API's: the req/s ratio the two would reach on idle cores.
        for key in ("c1", "c16"):
            cpu_ratios = [
                ratio(b["cpu_us_per_req"], a["cpu_us_per_req"])
                for a, b in zip(runs["api_ml_signal"][key], runs["bare_litestar"][key], strict=True)
                if "cpu_us_per_req" in a and "cpu_us_per_req" in b
            ]
            if cpu_ratios:
                ratios[f"ml_signal_vs_bare_cpu_{key}"] = statistics.median(cpu_ratios)
    goals = {
        "ml_signal_p50_le_2ms_c1": ml["c1"]["p50_ms"] <= 2.0,
        "ml_signal_ge_50pct_of_bare_litestar_c16": ratios["ml_signal_vs_bare_c16"] >= 0.5,
    }
    if "mlflow_serve" in results:
        mf = results["mlflow_serve"]
        ratios |= {
            "ml_signal_throughput_vs_mlflow_c1": ratio(ml["c1"]["req_per_s"], mf["c1"]["req_per_s"]),
            "ml_signal_throughput_vs_mlflow_c16": ratio(ml["c16"]["req_per_s"], mf["c16"]["req_per_s"]),
            "ml_signal_p50_vs_mlflow_c1": ratio(ml["c1"]["p50_ms"], mf["c1"]["p50_ms"]),
        }
        goals["ml_signal_throughput_ge_10x_mlflow_c16"] = ratios["ml_signal_throughput_vs_mlflow_c16"] >= 10
    report = {
        "benchmark": "serving",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_generator": client,
        "server": args.server,
        "api_rate_limit_per_minute": args.rate_limit,
        "model": {"name": MODEL, "version": version, "shape": "LSTM 2x32, 48 bars x 12 features"},
        **results,
        "api_gc": api_gc,
        "ratios": ratios,
        "goals": goals,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
