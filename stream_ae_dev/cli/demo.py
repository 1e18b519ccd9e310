"""``stream-ae demo``: the whole system in a few minutes, on this machine.

1. start a real Kafka-protocol broker (Tansu) and a real Redis on free local ports;
2. train a small LSTM autoencoder on the history of a few synthetic metric streams;
3. start a worker process (``stream-ae worker``) on that model;
4. stream the live continuation of those series, with anomalies injected into some;
5. print the alerts as they arrive, then a summary: which anomalies were caught, false alerts;
6. stop everything cleanly (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from stream_ae_dev.worker_probe import http_get, wait_ready

HELP = "end-to-end demo: stack, model, stream, alerts"

EXAMPLES = (
    "stream-ae demo",
    "stream-ae demo --streams 10 --anomalous 4 --epochs 8",
    "stream-ae demo --workdir .demo --seed 3",
)

LIVE_TOPIC = "stream-ae.metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    parser.add_argument("--streams", type=int, default=6, help="number of streams (6)")
    parser.add_argument("--anomalous", type=int, default=3, help="streams with anomalies (3)")
    parser.add_argument("--history", type=int, default=1500, help="training steps per stream")
    parser.add_argument("--live", type=int, default=400, help="live steps per stream (400)")
    parser.add_argument("--window", type=int, default=32, help="window size W (32)")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs, at most (12)")
    parser.add_argument("--rate", type=float, default=400.0, help="live events per second (400)")
    parser.add_argument("--seed", type=int, default=3, help="random seed")
    parser.add_argument("--workdir", type=Path, help="keep model and logs here (default: temp)")


def run(args: argparse.Namespace) -> int:
    from stream_ae_dev.devstack import DevStack, find_free_port

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stream-ae-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stack = DevStack(
        run_dir=workdir / "stack",
        topics={LIVE_TOPIC: 2, "stream-ae.alerts": 1, "stream-ae.dlq": 1},
    )
    worker: subprocess.Popen[bytes] | None = None
    print("[1/5] starting the broker (Tansu) and Redis ...", flush=True)
    stack.start()
    try:
        print(f"      broker {stack.bootstrap_servers}, redis {stack.redis_url}", flush=True)
        streams = _make_streams(args)
        print(
            f"[2/5] training the autoencoder on {args.streams} x {args.history} steps ...",
            flush=True,
        )
        model_dir = _train(streams, args, workdir / "model")
        metrics_port = find_free_port()
        env = {
            **os.environ,
            "STREAM_AE_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
            "STREAM_AE_REDIS_URL": stack.redis_url,
            "STREAM_AE_MODEL_PATH": str(model_dir),
            "STREAM_AE_INPUT_TOPICS": LIVE_TOPIC,
            "STREAM_AE_METRICS_PORT": str(metrics_port),
            "STREAM_AE_METRICS_HOST": "127.0.0.1",
            "STREAM_AE_SESSION_TIMEOUT_MS": "6000",
            "STREAM_AE_FETCH_MAX_WAIT_MS": "20",
            "STREAM_AE_MAX_BATCH_WAIT_MS": "100",
            "STREAM_AE_LOG_FORMAT": "text",
            "STREAM_AE_LOG_LEVEL": "WARNING",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        print("[3/5] starting a worker ...", flush=True)
        log_file = (workdir / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "stream_ae", "worker"], env=env, stdout=log_file, stderr=log_file
        )
        wait_ready(metrics_port, worker, timeout_s=120, log_path=workdir / "worker.log")
        print("      worker ready (model loaded, partitions assigned)", flush=True)
        print(f"[4/5] streaming {args.streams} x {args.live} live events at {args.rate:.0f}/s ...")
        alerts = _stream_and_follow(stack.bootstrap_servers, streams, args)
        print("[5/5] summary")
        _summary(streams, alerts, args)
        _print_metrics(metrics_port)
        return 0
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()  # SIGTERM: the worker finishes its batch, commits and exits
            try:
                code = worker.wait(timeout=30)
                print(f"worker stopped (exit {code})")
            except subprocess.TimeoutExpired:
                worker.kill()
        stack.stop()
        print("broker and Redis stopped")
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _make_streams(args: argparse.Namespace) -> list[Any]:
    from stream_ae.core.synthetic import make_stream

    return [
        make_stream(
            f"host-{i:02d}.cpu",
            args.history + args.live,
            anomalies=2 if i < args.anomalous else 0,
            min_anomaly_step=args.history + 2 * args.window,
            seed=args.seed * 101 + i,
        )
        for i in range(args.streams)
    ]


def _train(streams: list[Any], args: argparse.Namespace, out: Path) -> Path:
    from stream_ae.model.network import ModelSpec
    from training.fit import FitConfig, train_artifact

    started = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    path = train_artifact(
        [(s.name, s.values[: args.history]) for s in streams],
        ModelSpec(window=args.window, hidden=32),
        out,
        name="demo",
        config=FitConfig(epochs=args.epochs, train_stride=2, seed=args.seed, verbose=2),
    )
    print(f"      trained in {time.perf_counter() - started:.0f} s -> {path}", flush=True)
    return path


def _stream_and_follow(
    bootstrap: str, streams: list[Any], args: argparse.Namespace
) -> list[dict[str, Any]]:
    import threading

    from stream_ae.alerts import parse_alert
    from stream_ae.cli.alerts import HEADER, format_alert
    from stream_ae.io.kafka import KafkaConnection, Partition
    from stream_ae.io.producing import interleave, send_events

    kafka = KafkaConnection(bootstrap, client_id="stream-ae-demo")
    consumer = kafka.consumer(auto_offset_reset="earliest", fetch_max_wait_ms=50)
    deadline = time.monotonic() + 60
    while not (partitions := consumer.partitions_of("stream-ae.alerts")):
        if time.monotonic() > deadline:
            raise RuntimeError("the topic stream-ae.alerts does not exist")
        time.sleep(0.5)
    consumer.assign([Partition("stream-ae.alerts", p) for p in partitions])
    producer = kafka.producer()
    sender = threading.Thread(
        target=send_events,
        args=(producer, LIVE_TOPIC, interleave(streams, start=args.history)),
        kwargs={"rate_per_s": args.rate},
        daemon=True,
    )
    sender.start()
    alerts: list[dict[str, Any]] = []
    seen: set[str] = set()
    print(HEADER, flush=True)
    quiet_since = time.monotonic()
    while sender.is_alive() or time.monotonic() - quiet_since < 8:
        for m in consumer.poll_batch(timeout_ms=300, max_records=500):
            alert = orjson.loads(m.value or b"{}")
            if alert["alert_id"] not in seen:
                seen.add(alert["alert_id"])
                alerts.append(alert)
                print(format_alert(parse_alert(alert)), flush=True)
            quiet_since = time.monotonic()
        if sender.is_alive():
            quiet_since = time.monotonic()
    producer.close()
    consumer.close()
    return alerts


def _summary(streams: list[Any], alerts: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from stream_ae.core.records import parse_ts

    opened = [a for a in alerts if a["status"] == "open"]
    caught = missed = 0
    matched: set[str] = set()
    for s in streams:
        for start, end, kind in s.anomalies:
            # A window overlapping the anomaly ends within [start, end + W).
            lo, hi = int(s.ts_ms[start]), int(s.ts_ms[min(end + args.window, len(s.ts_ms) - 1)])
            hits = [
                a
                for a in opened
                if a["stream"] == s.name and lo <= parse_ts(a["window"]["end_ts"]) <= hi
            ]
            matched.update(a["alert_id"] for a in hits)
            status = "caught" if hits else "MISSED"
            caught += bool(hits)
            missed += not hits
            step = start - args.history
            print(f"  {s.name}: {kind:<8} at step {step:>4} of the live stream: {status}")
    false_alerts = [a for a in opened if a["alert_id"] not in matched]
    print(
        f"  {caught} of {caught + missed} injected anomalies caught, "
        f"{len(false_alerts)} alert(s) elsewhere, {len(alerts)} alert messages in all"
    )


def _print_metrics(port: int) -> None:
    status, body = http_get(port, "/metrics")
    if status != 200:
        return
    text = body.decode()
    wanted = ("stream_ae_events_total", "stream_ae_windows_scored_total", "stream_ae_alerts_total")
    for line in text.splitlines():
        if line.startswith(wanted):
            print("  " + line)
