"""Streaming scorer benchmark on a real Kafka broker (started like the test fixture does).

1. Throughput: N ticks over S symbols are produced first; then one `crypto-platform score` process
   consumes them and produces one prediction each. ticks/s = predictions / (time between the first and
   the last prediction's record timestamp, i.e. the scorer's own send times: start-up excluded).
   In the same run, on the same topic and broker, the pass-through loop (`stream_passthrough.py`: aiokafka
   consumer → batched producer → commit, the scorer's batch size and client settings, nothing computed)
   is measured the same way: the scorer / pass-through ratio is the scorer's own per-tick cost.
   The pass-through runs a second time sending outputs of the predictions' mean size (a constant
   value, `--value-bytes`): the client's cost of the larger outputs, apart from the scorer's work.
2. Latency at a fixed rate (1k ticks/s), `--latency-runs` times, each with a fresh scorer and topics:
   tick → prediction = the moment the benchmark's reader receives the prediction − the tick's producer
   timestamp (one clock, one machine). p50 / p99 / max per run, split at the scorer's own stamp
   (`latency_ms` in the prediction: tick → scored; the rest is the scorer's produce + the reader's fetch),
   with what explains the tail: the scorer's GC pauses (its `crypto_scorer_gc_pause_seconds`), the CPU
   the scorer, the broker JVM and the whole machine used during the run (/proc), and how the slowest 1 %
   cluster in time (a few stalls or a spread).
3. The naive design (the seed's consumer), measured in the same run on a sample: consume one message,
   POST it to `/v1/crypto/signal` of a running `crypto-platform serve`, produce the answer, wait for the
   ack, next message.

Prints JSON with the figures, the ratios to the pass-through and to the naive design and the goals as
booleans (≥ 20k ticks/s per scorer process, ≥ 75 % of pass-through, ≥ 50× naive, p99 ≤ 50 ms at 1k
ticks/s in ≥ 4 of 5 runs). The machine may be shared: `os.getloadavg()` is recorded beside each figure.

    .venv/bin/python benchmarks/stream.py [--ticks 200000] [--symbols 10] [--rate 1000] [--latency-runs 5]
        [--naive 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gc_histogram import gc_pauses  # noqa: E402  (this folder, on sys.path as the script's own)

from crypto_platform.devtools.kafka.runner import LocalKafka  # noqa: E402
from crypto_platform.devtools.ports import free_port  # noqa: E402
from crypto_platform.lib.stream.ticks import Tick, encode_tick, tick_key  # noqa: E402
from serving.stream.config import Topics, ensure_topics  # noqa: E402

BASES = ("BTC", "ETH", "SOL", "BNB", "XRP", "ADA", "DOGE", "AVAX", "DOT", "LINK", "LTC", "TRX")
GOAL_TICKS_PER_S = 20_000
GOAL_RATIO = 50
GOAL_P99_MS = 50
GOAL_PASS_THROUGH_RATIO = 0.75
SCORER_GC_METRIC = "crypto_scorer_gc_pause_seconds"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ticks(symbols: list[str], n: int, start_ms: int, span_ms: int) -> list[Tick]:
    rng = np.random.default_rng(7)
    steps = rng.normal(0, 2e-4, size=n)
    step = max(span_ms // max(n, 1), 1)
    prices = {s: 100.0 * (i + 1) for i, s in enumerate(symbols)}
    out = []
    for i in range(n):
        s = symbols[i % len(symbols)]
        prices[s] *= 1 + steps[i]
        out.append(Tick(s, prices[s], float(abs(steps[i]) * 100), start_ms + i * step, "benchmark"))
    return out


async def produce_all(bootstrap: str, topic: str, items: list[Tick]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, encode_tick(t), key=tick_key(t.symbol)) for t in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_predictions(
    bootstrap: str, topic: str, count: int, timeout_s: float, on_record=None, writer=None
) -> list:
    """Read `count` records from the start of `topic` (or until `timeout_s`, or until the `writer`
    process has exited and nothing more arrives)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=5
    )
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            if not batch and writer is not None and writer.poll() is not None:
                raise RuntimeError(f"the writer exited ({writer.returncode}) after {len(records)} records")
            received = time.time()
            for messages in batch.values():
                for m in messages:
                    records.append(m)
                    if on_record is not None:
                        on_record(m, received)
    finally:
        await consumer.stop()
    return records


def scorer_process(bootstrap: str, topics: Topics, symbols: list[str], data_dir: Path, log: Path, group: str):
    """A `crypto-platform score` process; returns it with the port of its /metrics endpoint."""
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            **topics.env(),
            "CRYPTO_SYMBOLS": ",".join(symbols),
            "CRYPTO_MARKET_SOURCE": "simulated",
            "CRYPTO_DATA_LOCATION": str(data_dir),
        }
    )
    metrics_port = free_port()
    args = ["--group-id", group, "--no-model", "--metrics-port", str(metrics_port), "--log-level", "WARNING"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "crypto_platform.cli", "score", *args],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    return proc, metrics_port


def pass_through_process(
    bootstrap: str, source: str, dest: str, log: Path, group: str, value_bytes: int | None = None
):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = ["--bootstrap-servers", bootstrap, "--source", source, "--dest", dest, "--group", group]
    if value_bytes:
        args += ["--value-bytes", str(value_bytes)]
    return subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "stream_passthrough.py"), *args],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def unique_topics(tag: str) -> Topics:
    stamp = f"bench-{tag}-{os.getpid()}-{int(time.time())}"
    return Topics(f"{stamp}.prices", f"{stamp}.predictions", f"{stamp}.alerts", f"{stamp}.dlq")


# -- what the machine was doing: a shared 2-core box, so every figure carries it -----------------------


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (the broker is `crypto-platform kafka-local` with a JVM under it)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by `pids` (processes gone are left out)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _CLOCK_TICKS


def runqueue_wait_seconds(pids: list[int]) -> float:
    """Seconds the threads of `pids` have spent runnable but waiting for a core (/proc/PID/task/TID/
    schedstat, second field): time lost to CPU contention, whoever caused it."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / _CLOCK_TICKS, sum(values) / _CLOCK_TICKS


class CpuWatch:
    """CPU used by named process trees and by the whole machine between `start()` and `stop()`."""

    def __init__(self, **roots: int | None) -> None:
        self.roots = {name: pid for name, pid in roots.items() if pid is not None}

    def start(self) -> CpuWatch:
        self.started = time.monotonic()
        self.trees = {name: _tree(pid) for name, pid in self.roots.items()}
        self.before = {name: cpu_seconds(pids) for name, pids in self.trees.items()}
        self.waited_before = {name: runqueue_wait_seconds(pids) for name, pids in self.trees.items()}
        self.machine_before = machine_cpu()
        return self

    def stop(self) -> dict:
        wall = time.monotonic() - self.started
        busy0, total0 = self.machine_before
        busy1, total1 = machine_cpu()
        cores = os.cpu_count() or 1
        out: dict = {"wall_seconds": round(wall, 3)}
        for name, pids in self.trees.items():
            used = cpu_seconds(pids) - self.before[name]
            waited = runqueue_wait_seconds(pids) - self.waited_before[name]
            out[f"{name}_cpu_seconds"] = round(used, 3)
            out[f"{name}_cpu_percent_of_one_core"] = round(100 * used / wall, 1)
            # Per second of wall time: how long its threads were ready to run and no core was free.
            out[f"{name}_runqueue_wait_ms_per_s"] = round(1000 * waited / wall, 1)
        out["machine_busy_percent_of_all_cores"] = round(
            100 * (busy1 - busy0) / max(total1 - total0, 1e-9), 1
        )
        out["cores"] = cores
        return out


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""


# -- 1. throughput: the scorer and the pass-through on the same messages -------------------------------


def _output_rate(records: list) -> tuple[float, float | None]:
    stamps = sorted(r.timestamp for r in records)
    elapsed_s = (stamps[-1] - stamps[0]) / 1000 if len(stamps) > 1 else float("nan")
    return elapsed_s, (len(records) - 1) / elapsed_s if elapsed_s > 0 else None


def _measure(proc: subprocess.Popen, bootstrap: str, topic: str, n: int, broker_pid: int | None) -> dict:
    """Outputs per second of `proc`, and the CPU it and the broker used from its first output to its
    last (start-up excluded): CPU µs per output is its cost per message whatever else the machine runs."""
    watch = CpuWatch(worker=proc.pid, broker=broker_pid)
    marks: dict[str, object] = {}

    value_bytes = 0

    def on_record(record, received: float) -> None:
        nonlocal value_bytes
        if not marks:
            marks["loadavg_before"] = load_average()
            watch.start()
        marks["last"] = record
        value_bytes += len(record.value or b"")

    try:
        records = asyncio.run(read_predictions(bootstrap, topic, n, 600, on_record, proc))
        if not marks:
            raise RuntimeError(f"no output on {topic} within the timeout")
        cpu = watch.stop()
    finally:
        stop(proc)
    elapsed_s, rate = _output_rate(records)
    return {
        "outputs": len(records),
        "seconds": elapsed_s,
        "per_s": rate,
        "mean_value_bytes": round(value_bytes / max(len(records), 1), 1),
        "worker_cpu_us_per_output": round(1e6 * cpu["worker_cpu_seconds"] / max(len(records) - 1, 1), 2),
        "loadavg_before": marks["loadavg_before"],
        "loadavg_after": load_average(),
        **cpu,
    }


def throughput(
    bootstrap: str, symbols: list[str], n: int, work: Path, rounds: int, broker_pid: int | None
) -> dict:
    topics = unique_topics("tput")
    asyncio.run(ensure_topics(bootstrap, topics, 3))
    # Event times over the last 3 hours: bars close on the way, so features and signals are refreshed.
    items = ticks(symbols, n, now_ms() - 3 * 3_600_000, 3 * 3_600_000 - 60_000)
    started = time.perf_counter()
    asyncio.run(produce_all(bootstrap, topics.prices, items))
    produce_s = time.perf_counter() - started
    scorer_runs, pass_runs, sized_runs = [], [], []
    # Alternated, each from the start of the same topic with a group of its own: load from the other
    # users of the machine drifts, and alternating spreads it over both.
    for i in range(rounds):
        out = Topics(topics.prices, f"{topics.predictions}.pass{i}", topics.alerts, topics.dlq)
        asyncio.run(ensure_topics(bootstrap, out, 3))
        proc = pass_through_process(
            bootstrap, topics.prices, out.predictions, work / "passthrough.log", f"bench-pass-{i}"
        )
        pass_runs.append(_measure(proc, bootstrap, out.predictions, n, broker_pid))
        out = Topics(topics.prices, f"{topics.predictions}.score{i}", topics.alerts, topics.dlq)
        asyncio.run(ensure_topics(bootstrap, out, 3))
        proc, _ = scorer_process(
            bootstrap, out, symbols, work / "data", work / "scorer-tput.log", f"bench-tput-{i}"
        )
        scorer_runs.append(_measure(proc, bootstrap, out.predictions, n, broker_pid))
        # The pass-through again with outputs of the predictions' size: what of the gap is the client's
        # cost of larger outputs rather than the scorer's work.
        out = Topics(topics.prices, f"{topics.predictions}.sized{i}", topics.alerts, topics.dlq)
        asyncio.run(ensure_topics(bootstrap, out, 3))
        size = round(scorer_runs[-1]["mean_value_bytes"])
        proc = pass_through_process(
            bootstrap, topics.prices, out.predictions, work / "passthrough.log", f"bench-sized-{i}", size
        )
        sized_runs.append(_measure(proc, bootstrap, out.predictions, n, broker_pid))
    scorer_best = max((r["per_s"] or 0.0) for r in scorer_runs)
    pass_best = max((r["per_s"] or 0.0) for r in pass_runs)
    scorer_cpu = min(r["worker_cpu_us_per_output"] for r in scorer_runs)
    pass_cpu = min(r["worker_cpu_us_per_output"] for r in pass_runs)
    sized_best = max((r["per_s"] or 0.0) for r in sized_runs)
    sized_cpu = min(r["worker_cpu_us_per_output"] for r in sized_runs)
    return {
        "ticks": n,
        "symbols": len(symbols),
        "pre_produce_seconds": round(produce_s, 2),
        "scorer": scorer_runs,
        "pass_through": pass_runs,
        "scorer_ticks_per_s": scorer_best,
        "pass_through_msgs_per_s": pass_best,
        # Best against best: the machine's other users only ever slow a run down.
        "ratio_scorer_to_pass_through": scorer_best / pass_best if pass_best else None,
        # The same comparison in CPU per message (a process gets a varying share of a busy machine,
        # its CPU per message barely changes): pass-through µs / scorer µs.
        "scorer_cpu_us_per_tick": scorer_cpu,
        "pass_through_cpu_us_per_msg": pass_cpu,
        "cpu_ratio_pass_through_to_scorer": pass_cpu / scorer_cpu if scorer_cpu else None,
        "pass_through_sized_to_predictions": sized_runs,
        "ratio_scorer_to_sized_pass_through": scorer_best / sized_best if sized_best else None,
        "sized_pass_through_cpu_us_per_msg": sized_cpu,
    }


# -- 2. latency at a fixed rate ------------------------------------------------------------------------


def latency(
    bootstrap: str,
    symbols: list[str],
    rate: float,
    seconds: float,
    work: Path,
    broker_pid: int | None,
    run: int,
) -> dict:
    topics = unique_topics(f"lat{run}")
    asyncio.run(ensure_topics(bootstrap, topics, 3))
    # A group per run: the scorer is a static member, and the group of the previous run still holds
    # its assignment (of another topic) until the session times out.
    proc, metrics_port = scorer_process(
        bootstrap, topics, symbols, work / "data", work / "scorer-lat.log", f"bench-lat-{run}"
    )
    n = int(rate * seconds)
    # (input partition, offset) → (receive time ms, the scorer's own tick → scored ms)
    received_at: list[tuple[tuple[int, int], float, float | None]] = []
    sent_at_ms: dict[tuple[int, int], int] = {}
    marks: dict[str, object] = {}

    def on_record(record, received: float) -> None:
        prediction = json.loads(record.value)
        source = prediction["source"]
        received_at.append(
            ((source["partition"], source["offset"]), received * 1000, prediction["latency_ms"])
        )

    async def run() -> None:
        # Warm-up: wait until the scorer answers one tick, so start-up is not measured.
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        warm = Tick(symbols[0], 100.0, 0.0, now_ms() - 1000, "benchmark")
        meta = await producer.send_and_wait(topics.prices, encode_tick(warm), key=tick_key(warm.symbol))
        sent_at_ms[(meta.partition, meta.offset)] = meta.timestamp
        reader = asyncio.create_task(
            read_predictions(bootstrap, topics.predictions, n + 1, 300, on_record, proc)
        )
        while not received_at:
            await asyncio.sleep(0.05)
        received_at.clear()
        before = scrape(metrics_port)
        marks["gc_before"] = gc_pauses(before, SCORER_GC_METRIC)["all"]
        marks["loadavg_before"] = load_average()
        marks["watch"] = CpuWatch(scorer=proc.pid, broker=broker_pid).start()
        items = ticks(symbols, n, now_ms() - 1000, 1000)
        t0 = time.monotonic()
        pending = []
        for i, tick in enumerate(items):
            ts = now_ms()
            fut = await producer.send(
                topics.prices, encode_tick(tick), key=tick_key(tick.symbol), timestamp_ms=ts
            )
            pending.append((fut, ts))
            delay = t0 + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) >= 50:
                for f, t in pending:
                    m = await f
                    sent_at_ms[(m.partition, m.offset)] = t
                pending.clear()
        for f, t in pending:
            m = await f
            sent_at_ms[(m.partition, m.offset)] = t
        await reader
        marks["cpu"] = marks["watch"].stop()
        marks["loadavg_after"] = load_average()
        marks["gc_after"] = gc_pauses(scrape(metrics_port), SCORER_GC_METRIC)["all"]
        await producer.stop()

    try:
        asyncio.run(run())
    finally:
        stop(proc)
    rows = [(at - sent_at_ms[key], at, scored) for key, at, scored in received_at if key in sent_at_ms]
    total = np.asarray([r[0] for r in rows])
    scored = np.asarray([r[2] for r in rows if r[2] is not None], dtype=np.float64)
    after_scored = np.asarray([r[0] - r[2] for r in rows if r[2] is not None], dtype=np.float64)
    p99 = float(np.percentile(total, 99))
    # The slowest 1 %: a few stalls (GC, the process descheduled) bunch up in time; batching spreads out.
    slow_at = sorted(at for value, at, _ in rows if value >= p99)
    episodes = sum(1 for i, at in enumerate(slow_at) if i == 0 or at - slow_at[i - 1] > 100)
    gc_before, gc_after = marks["gc_before"], marks["gc_after"]
    return {
        "rate_per_s": rate,
        "ticks": n,
        "measured": int(total.size),
        "p50_ms": float(np.percentile(total, 50)),
        "p99_ms": p99,
        "max_ms": float(total.max()),
        "tick_to_scored_p99_ms": float(np.percentile(scored, 99)) if scored.size else None,
        "scored_to_received_p99_ms": float(np.percentile(after_scored, 99)) if after_scored.size else None,
        "slowest_1pct_episodes_100ms_apart": episodes,
        "gc_during_run": {key: gc_after[key] - gc_before[key] for key in gc_after},
        "loadavg_before": marks["loadavg_before"],
        "loadavg_after": marks["loadavg_after"],
        **marks["cpu"],
    }


def naive(bootstrap: str, symbols: list[str], sample: int, work: Path) -> dict:
    """The seed's design: one message at a time through the REST API, one produce with an ack each."""
    topics = unique_topics("naive")
    asyncio.run(ensure_topics(bootstrap, topics, 3))
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "CRYPTO_SYMBOLS": ",".join(symbols),
            "CRYPTO_MARKET_SOURCE": "simulated",
            "CRYPTO_DATA_LOCATION": str(work / "data"),
            "CRYPTO_API_RATE_LIMIT": "0",
            "CRYPTO_API_HISTORY_URL": f"sqlite:///{work / 'history.db'}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "CRYPTO_API_MODEL_STARTUP_S": "1",
        }
    )
    api = subprocess.Popen(
        [sys.executable, "-m", "crypto_platform.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=(work / "api.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or api.poll() is not None:
                    raise RuntimeError(
                        f"the API did not start: {(work / 'api.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.5)
        for symbol in symbols:  # warm the API's caches: the naive loop is measured in steady state
            _post(f"{url}/v1/crypto/signal", {"symbol": symbol})
        asyncio.run(produce_all(bootstrap, topics.prices, ticks(symbols, sample, now_ms() - 60_000, 50_000)))

        async def loop() -> float:
            consumer = AIOKafkaConsumer(
                topics.prices,
                bootstrap_servers=bootstrap,
                group_id="bench-naive",
                auto_offset_reset="earliest",
            )
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
            await consumer.start()
            await producer.start()
            try:
                done = 0
                started = None
                while done < sample:
                    message = await consumer.getone()
                    started = started or time.perf_counter()
                    tick = json.loads(message.value)
                    body = await asyncio.to_thread(
                        _post, f"{url}/v1/crypto/signal", {"symbol": tick["symbol"]}
                    )
                    body["price"] = tick["price"]
                    await producer.send_and_wait(
                        topics.predictions, json.dumps(body).encode(), key=message.key
                    )
                    done += 1
                return time.perf_counter() - started
            finally:
                await consumer.stop()
                await producer.stop()

        seconds = asyncio.run(loop())
    finally:
        stop(api)
    return {"sample": sample, "seconds": seconds, "ticks_per_s": sample / seconds}


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def progress(what: str, figures: dict) -> None:
    """Each phase's figures on stderr as they come (the JSON on stdout comes at the end)."""
    print(f"{what}: {json.dumps(figures)}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=200_000)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--throughput-rounds", type=int, default=2, help="scorer / pass-through pairs")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--latency-runs", type=int, default=5, help="latency runs, each a fresh scorer")
    parser.add_argument("--naive", type=int, default=500, help="ticks in the naive design's sample (0: skip)")
    parser.add_argument("--bootstrap-servers", default=None, help="use this broker instead of starting one")
    args = parser.parse_args()
    # SIGTERM ends the run through the `finally` below, so the broker it started is stopped with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    symbols = [f"{b}/USDT" for b in BASES[: args.symbols]]
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        work = Path(tmp)
        broker = None
        broker_pid = None
        if args.bootstrap_servers:
            bootstrap = args.bootstrap_servers
        else:
            broker = LocalKafka(work / "kafka", log_path=work / "kafka.log").start()
            bootstrap = broker.bootstrap_servers
            broker_pid = broker.proc.pid
        try:
            tput = throughput(bootstrap, symbols, args.ticks, work, args.throughput_rounds, broker_pid)
            progress("throughput", tput)
            runs = []
            for run in range(args.latency_runs):
                runs.append(
                    latency(bootstrap, symbols, args.rate, args.latency_seconds, work, broker_pid, run)
                )
                progress(f"latency run {run + 1}", runs[-1])
            slow = naive(bootstrap, symbols, args.naive, work) if args.naive else None
        finally:
            if broker is not None:
                broker.stop()
    scorer_rate = tput["scorer_ticks_per_s"]
    ratio_naive = scorer_rate / slow["ticks_per_s"] if slow and scorer_rate else None
    ratio_pass = tput["ratio_scorer_to_pass_through"]
    within = sum(1 for r in runs if r["p99_ms"] <= GOAL_P99_MS)
    print(
        json.dumps(
            {
                "benchmark": "stream",
                "throughput": tput,
                "latency_runs": runs,
                "latency_p99_ms_per_run": [round(r["p99_ms"], 1) for r in runs],
                "naive": slow,
                "ratio_vs_naive": ratio_naive,
                "ratio_vs_pass_through": ratio_pass,
                "goals": {
                    "ticks_per_s_ge_20k": bool(scorer_rate and scorer_rate >= GOAL_TICKS_PER_S),
                    "ge_75pct_of_pass_through": bool(ratio_pass and ratio_pass >= GOAL_PASS_THROUGH_RATIO),
                    "ratio_ge_50x_naive": bool(ratio_naive and ratio_naive >= GOAL_RATIO),
                    "p99_le_50ms_at_1k_in_4_of_5_runs": within >= math.ceil(0.8 * len(runs))
                    if runs
                    else False,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
