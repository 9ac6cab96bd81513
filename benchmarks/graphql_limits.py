"""How fast a one-request denial-of-service GraphQL document is refused, against a real API process.

The review's attack: 1,000 aliased `ohlcvData(limit: 1000)` fields in one ~107 KB document (it took
37.5 s and returned 142 MB before the limits). Here `crypto-platform serve` runs under uvicorn on
loopback over simulated stored bars (no network, no MLflow: the model endpoints are not involved), and
each document below is posted `--repeat` times on one keep-alive connection; the table gives the
median and worst wall time per request and the size of the answer. The goal is < 50 ms for the
1,000-alias document; the in-budget document shows what an accepted request of the same shape costs.

    .venv/bin/python benchmarks/graphql_limits.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crypto_platform.devtools.ports import free_port  # noqa: E402


def aliased(count: int, limit: int) -> str:
    fields = " ".join(
        f'a{i}: ohlcvData(input: {{symbol: "BTC/USDT", limit: {limit}}}) {{ rows data {{ ts close }} }}'
        for i in range(count)
    )
    return "{ " + fields + " }"


DOCUMENTS = {
    "{ health { status } } (baseline)": "{ health { status } }",
    "1,000 aliases × limit 1000 (the attack)": aliased(1000, 1000),
    "20 aliases (alias limit)": aliased(20, 10),
    "12 × limit 1000 (cost budget)": aliased(12, 1000),
    "5 × limit 200 (accepted)": aliased(5, 200),
}


def _store(root: Path) -> None:
    from crypto_platform_tests.fixtures.api import write_pipeline_store

    hour = 3_600_000
    now = int(datetime.now(UTC).timestamp() * 1000) // hour * hour
    write_pipeline_store(root, ("BTC/USDT",), now, 35)


def _post(conn: http.client.HTTPConnection, document: str) -> tuple[float, int, str]:
    body = json.dumps({"query": document})
    started = time.perf_counter()
    conn.request("POST", "/graphql", body=body, headers={"content-type": "application/json"})
    answer = conn.getresponse().read()
    elapsed = time.perf_counter() - started
    parsed = json.loads(answer)
    verdict = "data" if parsed.get("data") else (parsed["errors"][0].get("extensions", {}).get("code", "?"))
    return elapsed, len(answer), verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gql-limits-") as tmp:
        root = Path(tmp)
        _store(root / "data")
        port = free_port()
        env = {
            **os.environ,
            "CRYPTO_DATA_LOCATION": str(root / "data"),
            "CRYPTO_SYMBOLS": "BTC/USDT",
            "CRYPTO_MARKET_SOURCE": "simulated",
            "CRYPTO_API_HISTORY_URL": f"sqlite:///{root / 'history.db'}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "CRYPTO_API_RATE_LIMIT": "0",
            "CRYPTO_API_MODEL_STARTUP_S": "1",
        }
        log = (root / "serve.log").open("wb")
        exe = Path(sys.executable).with_name("crypto-platform")
        proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(port), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    probe.request("GET", "/health")
                    if probe.getresponse().status == 200:
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit((root / "serve.log").read_text()[-3000:]) from None
                    time.sleep(0.3)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            header = f"{'document':44} {'bytes in':>9} {'answer':>18} {'median ms':>10} {'max ms':>8}"
            print(f"{header} {'bytes out':>10}")
            for label, document in DOCUMENTS.items():
                _post(conn, document)  # warm-up (first parse, imports)
                runs = [_post(conn, document) for _ in range(args.repeat)]
                times = [t * 1000 for t, _, _ in runs]
                print(
                    f"{label:44} {len(document):>9,} {runs[-1][2]:>18} {statistics.median(times):>10.1f} "
                    f"{max(times):>8.1f} {runs[-1][1]:>10,}"
                )
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)


if __name__ == "__main__":
    main()
