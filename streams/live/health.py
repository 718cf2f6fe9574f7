"""Health and metrics of a live worker, the same for both runtimes: prometheus_client counters,
a health state with reasons, and the aiohttp server of ``/health`` and ``/metrics``.

``/health`` answers 200 ``ok``; 503 ``degraded`` while a service is unreachable (the database,
the broker: each probe or failed call names itself as a reason until it succeeds again) or
while input is pending and nothing has committed for ``stall_after`` seconds; 503 ``failed``
after a fatal error. Probes run every ``probe_every`` seconds, so an idle worker notices an
outage too.

Logging: library loggers (aiokafka, kafka, faust, mode) repeat the same error many times a
second while a service is down; ``quiet_repeats`` lets one line per message through per
``window`` seconds and counts the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

log = logging.getLogger("stageroute.worker")

NOISY_LOGGERS: Final = ("aiokafka", "kafka", "faust", "mode")


class Metrics:
    """The worker's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        c = lambda name, doc, *labels: Counter(f"stageroute_{name}", doc, labels, registry=r)  # noqa: E731
        self.events = c("events_processed", "events applied to an engine")
        self.decisions = c("routing_decisions", "routing decisions committed")
        self.deployments = c("deployment_decisions", "deployment decisions committed")
        self.dead_letters = c("dead_letters", "dead letters committed")
        self.skipped = c("redelivered_skipped", "records at or below the committed position")
        self.resent = c("decisions_resent", "committed outputs re-sent after a restart")
        self.batches = c("batches", "batches committed")
        self.snapshots = c("snapshots", "engine snapshots stored")
        self.fenced = c("fenced_partitions", "partitions lost to another worker's claim")
        self.retries = c("retries", "failed attempts retried, by service", "service")
        self.last_batch = Gauge("stageroute_last_batch_seconds", "duration of the last batch",
                                registry=r)
        self.domains = Gauge("stageroute_domains", "domains whose state is loaded", registry=r)
        self.lag = Gauge("stageroute_consumer_lag", "input records not yet processed",
                         ["topic", "partition"], registry=r)
        self.trail_lag = Gauge("stageroute_trail_lag_records", "input records applied and "
                               "published but not yet stored in the audit trail", registry=r)
        self.trail_age = Gauge("stageroute_trail_lag_seconds", "age of the oldest batch "
                               "published but not yet stored, after the last store", registry=r)
        self.lag_pauses = c("trail_lag_pauses", "times consumption paused for the trail's "
                            "lag bound")
        self.healthy = Gauge("stageroute_healthy", "1 if /health answers ok", registry=r)
        self.last_commit: float | None = None

    def committed(self, seconds: float) -> None:
        self.batches.inc()
        self.last_batch.set(seconds)
        self.last_commit = time.time()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Health:
    """What ``/health`` reports; updated from the event loop and worker threads."""

    def __init__(self, metrics: Metrics, stall_after: float) -> None:
        self.metrics = metrics
        self.stall_after = stall_after
        self.problems: dict[str, str] = {}
        self.failed: str | None = None
        self.started = time.time()
        #: Pending input per (topic, partition), set by the runtime.
        self.lag: Callable[[], Mapping[tuple[str, int], int]] = dict

    def degrade(self, service: str, reason: str) -> None:
        self.problems[service] = reason

    def clear(self, service: str) -> None:
        self.problems.pop(service, None)

    def stalled(self) -> str | None:
        pending = sum(self.lag().values())
        since = self.metrics.last_commit or self.started
        idle = time.time() - since
        if pending and idle > self.stall_after:
            return f"{pending} records pending, nothing committed for {idle:.0f} s"
        return None

    def report(self) -> tuple[int, dict[str, Any]]:
        problems = dict(self.problems)
        stall = self.stalled()
        if stall:
            problems["progress"] = stall
        status = "failed" if self.failed else "degraded" if problems else "ok"
        self.metrics.healthy.set(status == "ok")
        body = {"status": status, "error": self.failed, "reasons": problems,
                "last_commit": self.metrics.last_commit}
        return (200 if status == "ok" else 503), body


async def serve(health: Health, host: str, port: int,
                extra: Callable[[], Mapping[str, Any]] = dict) -> web.AppRunner:
    """Start ``/health`` and ``/metrics`` on ``host:port``; returns the runner to clean up."""

    async def get_health(request: web.Request) -> web.Response:
        status, body = health.report()
        return web.json_response({**body, **extra()}, status=status)

    async def get_metrics(request: web.Request) -> web.Response:
        for (topic, partition), lag in health.lag().items():
            health.metrics.lag.labels(topic, str(partition)).set(lag)
        return web.Response(body=health.metrics.render(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def probe_forever(health: Health, service: str, probe: Callable[[], Awaitable[Any]],
                        every: float) -> None:
    """Run ``probe`` every ``every`` seconds; a failure (or a hang past ``every``) marks the
    service degraded until a probe succeeds."""
    while True:
        try:
            await asyncio.wait_for(probe(), timeout=max(every, 1.0))
        except Exception as exc:  # any failure of the probe is the service's
            if service not in health.problems:
                log.warning("%s unreachable: %s", service, _short(exc))
            health.degrade(service, f"unreachable: {_short(exc)}")
        else:
            if service in health.problems:
                log.warning("%s reachable again", service)
            health.clear(service)
        await asyncio.sleep(every)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


class QuietRepeats(logging.Filter):
    """Let a repeated log message (same logger, level and format string) through once per
    ``window`` seconds."""

    def __init__(self, window: float = 30.0) -> None:
        super().__init__()
        self.window = window
        self.seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        last = self.seen.get(key)
        if last is not None and now - last[0] < self.window:
            self.seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} [{last[1]} similar lines suppressed]"
        self.seen[key] = (now, 0)
        if len(self.seen) > 10_000:
            self.seen.clear()
        return True


def quiet_repeats(window: float = 30.0) -> None:
    """Install ``QuietRepeats`` on the noisy library loggers and their records' handlers."""
    flt = QuietRepeats(window)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).addFilter(flt)
    for handler in logging.getLogger().handlers:
        handler.addFilter(flt)
