"""``stream-ae worker``: run the streaming worker until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging

from stream_ae.errors import StreamAEError
from stream_ae.logs import fields, setup_logging
from stream_ae.settings import load_settings
from stream_ae.worker.metrics import HealthServer, WorkerMetrics

log = logging.getLogger("stream_ae.worker.loop")


EXAMPLES = (
    "stream-ae worker",
    "stream-ae worker --model-path registry --metrics-port 9464",
    "stream-ae worker --input-topics metrics.cpu,metrics.mem --group-id stream-ae-blue",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Consume events from the input topics, keep per-stream windows in Redis, score completed "
        "windows with the autoencoder and produce alerts. All settings come from STREAM_AE_* "
        "environment variables or .env (see the README's configuration table); the options below "
        "override them for this run."
    )
    parser.add_argument(
        "--model-path", help="artifact directory or registry root (STREAM_AE_MODEL_PATH)"
    )
    parser.add_argument(
        "--bootstrap-servers", help="Kafka bootstrap servers (STREAM_AE_BOOTSTRAP_SERVERS)"
    )
    parser.add_argument("--redis-url", help="Redis URL (STREAM_AE_REDIS_URL)")
    parser.add_argument(
        "--input-topics", help="comma-separated input topics (STREAM_AE_INPUT_TOPICS)"
    )
    parser.add_argument("--group-id", help="consumer group id (STREAM_AE_GROUP_ID)")
    parser.add_argument(
        "--metrics-port", type=int, help="port of /metrics, /healthz, /readyz; 0 = off"
    )


def run(args: argparse.Namespace) -> int:
    overrides = {
        key: value
        for key, value in {
            "model_path": args.model_path,
            "bootstrap_servers": args.bootstrap_servers,
            "redis_url": args.redis_url,
            "input_topics": args.input_topics,
            "group_id": args.group_id,
            "metrics_port": args.metrics_port,
        }.items()
        if value is not None
    }
    settings = load_settings(overrides)  # a ConfigError is the command line's one error line
    from stream_ae.worker.bootstrap import check_model_location

    check_model_location(settings)  # a registry folder that does not exist: the same
    setup_logging(settings.log_level, settings.log_format)
    log.info("starting", extra=fields(settings=settings.describe()))
    metrics = WorkerMetrics(process=True)
    health = None
    if settings.metrics_port:
        stale = settings.max_batch_processing_s * 2 + settings.max_batch_wait_ms / 1000 + 30
        health = HealthServer(metrics, settings.metrics_host, settings.metrics_port, stale).start()
    try:
        from stream_ae.worker.bootstrap import build_worker

        worker = build_worker(settings, metrics)
        worker.install_signal_handlers()
        scorer = worker.model.current()
        log.info(
            "running",
            extra=fields(
                model=scorer.version,
                # The rules the alerts follow, as the processor resolves them (no threshold:
                # the detector's own).
                alert_policy=worker.processor.policy_for(scorer).as_run(),
                post_processing=scorer.artifact.post is not None,
            ),
        )
        return worker.run()
    except StreamAEError as exc:
        log.error(f"cannot start: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if health is not None:
            health.stop()
