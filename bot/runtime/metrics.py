"""Prometheus metrics of one bot: what the code counts, exposed by ``GET /metrics``.

Each ``Metrics`` has its own ``CollectorRegistry``, never the global default:
tests build many bots in one process, and a second set of the same names in the
default registry is an error. Label values come from fixed sets (sub-command
names, Atlas operations, HTTP statuses, Slack method and error names), never
from what a user typed, so the number of series stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder

__all__ = ["Metrics", "outbox_kind"]


class Metrics:
    """The bot's counters and gauges, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.commands = Counter(
            "billing_bot_commands",
            "Slash commands handled, by sub-command and outcome "
            "(ok, usage_error, refused, failed).",
            ("subcommand", "outcome"),
            registry=self.registry,
        )
        self.atlas_requests = Counter(
            "billing_bot_atlas_requests",
            "Requests sent to the Atlas Admin API, every retry included, by operation and "
            "HTTP status (or transport_error).",
            ("operation", "status"),
            registry=self.registry,
        )
        self.cost_queries_pending = Gauge(
            "billing_bot_cost_queries_pending",
            "Cost Explorer queries waiting for their result (read from the database at scrape "
            "time; NaN when the database does not answer).",
            registry=self.registry,
        )
        self.alerts_posted = Counter(
            "billing_bot_alerts_posted",
            "Threshold alerts posted to Slack by the outbox (or found already posted).",
            registry=self.registry,
        )
        self.digests_posted = Counter(
            "billing_bot_digests_posted",
            "Spend digests posted to Slack by the outbox (or found already posted).",
            registry=self.registry,
        )
        self.job_runs = Counter(
            "billing_bot_job_runs",
            "Finished ticks of each scheduled job (failed ones included): how far the jobs got.",
            ("job",),
            registry=self.registry,
        )
        self.slack_errors = Counter(
            "billing_bot_slack_errors",
            "Failed Slack Web API calls, by method and Slack's error (or HTTP status class, or "
            "exception type for transport errors).",
            ("method", "error"),
            registry=self.registry,
        )

    def command(self, subcommand: str, outcome: str) -> None:
        self.commands.labels(subcommand=subcommand, outcome=outcome).inc()

    def posted(self, outbox_key: str) -> None:
        """One outbox message is in Slack: count it as an alert or a digest by its key."""
        kind = outbox_kind(outbox_key)
        if kind == "alert":
            self.alerts_posted.inc()
        elif kind == "digest":
            self.digests_posted.inc()

    def slack_error(self, method: str, error: str) -> None:
        self.slack_errors.labels(method=method, error=error).inc()

    def exposition(
        self, *, accept: str | None, cost_queries_pending: int | None
    ) -> tuple[bytes, str]:
        """Every metric and the content type, in the format the scraper's ``Accept`` asks for
        (Prometheus text 0.0.4 by default, OpenMetrics on request), with the gauge the caller
        read from the database (None: unknown)."""
        value = float("nan") if cost_queries_pending is None else cost_queries_pending
        self.cost_queries_pending.set(value)
        # choose_encoder reads a missing header as "" itself; its annotation says str only.
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def outbox_kind(key: str) -> str | None:
    """``alert`` or ``digest`` from an outbox key (``alert:…``, ``digest:…``, ``digest-now:…``).

    A digest's failure notice (``…:failed``) is neither: no digest was posted.
    """
    prefix = key.split(":", 1)[0]
    if prefix == "alert":
        return "alert"
    if prefix in ("digest", "digest-now", "digest-query") and not key.endswith(":failed"):
        return "digest"
    return None
