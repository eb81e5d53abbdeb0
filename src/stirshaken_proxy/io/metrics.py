"""Prometheus metrics, collected at scrape time from the engine's plain counters (nothing on
the hot path but dict increments). The registry is the application's own, passed in."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..engine.stats import CATALOGUE, LatencyHistogram

if TYPE_CHECKING:
    from ..app import Application

PREFIX = "stirshaken_"


def _histogram(name: str, doc: str, h: LatencyHistogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(PREFIX + name, doc, buckets=h.cumulative(), sum_value=h.sum)


class ServiceCollector(Collector):
    def __init__(self, app: Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        app = self.app
        engine = app.engine
        families: dict[str, CounterMetricFamily] = {}
        for name, (doc, labels) in CATALOGUE.items():
            families[name] = CounterMetricFamily(PREFIX + name, doc, labels=list(labels))
        seen: set[str] = set()
        for key, value in list(engine.stats.items()):
            family = families.get(key[0])
            if family is not None:
                family.add_metric(list(key[1:]), value)
                seen.add(key[0])
        for name, (_, labels) in CATALOGUE.items():
            if not labels and name not in seen:
                families[name].add_metric([], 0)  # a counter with no labels exists from start
        yield from families.values()
        io = CounterMetricFamily(PREFIX + "io_events", "Transport and fetch events",
                                 labels=["event"])
        for event, value in sorted(app.counters.items()):
            io.add_metric([event], value)
        yield io
        yield GaugeMetricFamily(PREFIX + "sip_transactions", "Transactions in flight",
                                value=engine.transactions)
        yield GaugeMetricFamily(PREFIX + "verify_parked_requests",
                                "Requests waiting for a credential fetch", value=engine.parked)
        tcp = GaugeMetricFamily(PREFIX + "tcp_connections", "Open TCP connections",
                                labels=["side"])
        for side, manager in app.tcp.items():
            tcp.add_metric([side], len(manager.connections))
        yield tcp
        flood = engine.flood
        yield CounterMetricFamily(PREFIX + "flood_bans", "Source addresses banned by the "
                                  "flood guard", value=flood.banned_total)
        yield GaugeMetricFamily(PREFIX + "flood_banned_sources", "Source addresses banned now",
                                value=len(flood.banned(time.time())))
        if app.auth is not None:
            yield _histogram("sign_seconds", "Time to sign one PASSporT",
                             app.auth.sign_latency)
            yield GaugeMetricFamily(PREFIX + "inventory_entries",
                                    "Numbers and ranges in the inventory",
                                    value=len(app.auth.inventory))
            yield GaugeMetricFamily(PREFIX + "inventory_version",
                                    "Version of the inventory in memory",
                                    value=app.auth.inventory.version)
            expiry = GaugeMetricFamily(PREFIX + "signing_certificate_expiry_seconds",
                                       "Seconds until our signing certificate expires",
                                       labels=["identity"])
            now = time.time()
            for name, not_after in app.certificate_expiry.items():
                expiry.add_metric([name], not_after - now)
            yield expiry
        if app.health is not None:
            now = time.time()
            states: dict[str, int] = {"healthy": 0, "at_velocity_limit": 0, "quarantined": 0}
            for tn in list(app.health.numbers):
                states[app.health.state(tn, now).value] += 1
            numbers = GaugeMetricFamily(PREFIX + "numbers", "Calling numbers by health state",
                                        labels=["state"])
            for state, count in states.items():
                numbers.add_metric([state], count)
            yield numbers
            yield CounterMetricFamily(PREFIX + "number_quarantines",
                                      "Numbers put in quarantine", value=app.health.quarantines)
        if app.inbound is not None:
            yield _histogram("verify_seconds", "Time to verify the Identity of one INVITE "
                             "(certificate already fetched)", app.inbound.verify_latency)
            cache = app.inbound.verifier.cache
            lookups = CounterMetricFamily(PREFIX + "x5u_cache_lookups",
                                          "Certificate cache lookups", labels=["result"])
            lookups.add_metric(["hit"], cache.hits)
            lookups.add_metric(["miss"], cache.misses)
            yield lookups
            yield GaugeMetricFamily(PREFIX + "x5u_cache_entries", "Cached credentials",
                                    value=len(cache))
        if app.fetcher is not None:
            yield _histogram("x5u_fetch_seconds", "Time to fetch an x5u chain",
                             app.fetcher.latency)


def make_registry(app: Application) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(app))
    registry.register(ProcessCollector(registry=None))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
