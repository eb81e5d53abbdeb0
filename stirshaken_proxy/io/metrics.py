"""Prometheus metrics, collected at scrape time from the engine's plain counters (nothing on
the hot path but dict increments). The registry is the application's own, passed in."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import engine_core
from ..sip.message import core_in_use
from ..stats import CATALOGUE, LatencyHistogram

if TYPE_CHECKING:
    from ..app import Application

PREFIX = "stirshaken_"


# Histograms, keyed (name, *label values) like the engine's counters.
_HISTOGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sign_seconds": ("Time to sign one PASSporT", ()),
    "verify_seconds": ("Time to verify the Identity of one INVITE (certificate already "
                       "fetched)", ()),
    "x5u_fetch_seconds": ("Time to fetch an x5u chain", ()),
    "gc_pause_seconds": ("Python garbage-collector pauses, by generation", ("generation",)),
}
HistogramValue = tuple[tuple[float, ...], list[int], float]  # buckets, counts, sum


def _value(h: LatencyHistogram) -> HistogramValue:
    return h.buckets, list(h.counts), h.sum


def snapshot(app: Application) -> dict[str, Any]:
    """What one worker counts, as plain values that add up across workers."""
    engine, shell = app.engine, app.shell
    histograms: dict[tuple[str, ...], HistogramValue] = {}
    cache = (0, 0, 0)
    services = engine.services if engine is not None else None
    if services is not None and services.authenticator is not None:
        histograms[("sign_seconds",)] = _value(services.authenticator.latency)
    if services is not None and services.verification is not None:
        histograms[("verify_seconds",)] = _value(services.verification.latency)
        c = services.verification.cache
        cache = (c.hits, c.misses, len(c))
    feed = app.parts.feed if app.parts is not None else None
    if feed is not None and feed.fetcher is not None:
        histograms[("x5u_fetch_seconds",)] = _value(feed.fetcher.latency)
    for generation, h in enumerate(app.gc.pauses):
        histograms[("gc_pause_seconds", str(generation))] = _value(h)
    user, system = os.times()[:2]
    io = dict(app.counters)
    if app.worker is not None:
        io["worker_link_drops"] = app.worker.dropped  # a link full past its queue
    return {"stats": dict(app.stats), "io": io,
            "transactions": engine.transactions if engine is not None else 0,
            "parked": engine.parked if engine is not None else 0,
            "tcp": {f"{side}/{transport}": len(m.connections)
                    for (side, transport), m in (shell.tcp.items() if shell is not None else ())},
            "flood_bans": engine.flood.banned_total if engine is not None else 0,
            "flood_banned": len(engine.flood.banned(time.monotonic())) if engine is not None else 0,
            "histograms": histograms, "cache": cache,
            "cpu": {app.worker_index: user + system}}


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several workers' snapshots (the first one is not changed)."""
    first, rest = snapshots[0], snapshots[1:]
    total = {**first, **{key: dict(first[key]) for key in
                         ("stats", "io", "tcp", "histograms", "cpu")}}
    for other in rest:
        for key in ("stats", "io", "tcp"):
            target = total[key]
            for k, v in other[key].items():
                target[k] = target.get(k, 0) + v
        histograms = total["histograms"]
        for k, (buckets, counts, hsum) in other["histograms"].items():
            mine = histograms.get(k)
            histograms[k] = (buckets, counts, hsum) if mine is None else (
                buckets, [a + b for a, b in zip(mine[1], counts, strict=True)], mine[2] + hsum)
        total["cpu"].update(other["cpu"])
        total["cache"] = tuple(a + b for a, b in zip(total["cache"], other["cache"],
                                                     strict=True))
        for k in ("transactions", "parked", "flood_bans", "flood_banned"):
            total[k] += other[k]
    return total


class ServiceCollector(Collector):
    def __init__(self, app: Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        app = self.app
        snap = app.metrics_snapshot()
        families: dict[str, CounterMetricFamily] = {}
        for name, (doc, labels) in CATALOGUE.items():
            families[name] = CounterMetricFamily(PREFIX + name, doc, labels=list(labels))
        seen: set[str] = set()
        for key, value in snap["stats"].items():
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
        for event, value in sorted(snap["io"].items()):
            io.add_metric([event], value)
        yield io
        core = GaugeMetricFamily(PREFIX + "sip_core_info", "The SIP message core in use "
                                 "(compiled: C; python: the reference) and how the engine "
                                 "runs (compiled: by mypyc; python: its source)",
                                 labels=["core", "engine"])
        core.add_metric([core_in_use(), engine_core()], 1)
        yield core
        yield GaugeMetricFamily(PREFIX + "sip_transactions", "Transactions in flight",
                                value=snap["transactions"])
        yield GaugeMetricFamily(PREFIX + "verify_parked_requests",
                                "Requests waiting for a credential fetch", value=snap["parked"])
        tcp = GaugeMetricFamily(PREFIX + "tcp_connections", "Open TCP and TLS connections",
                                labels=["side", "transport"])
        for key, count in sorted(snap["tcp"].items()):
            tcp.add_metric(key.split("/", 1), count)
        yield tcp
        yield CounterMetricFamily(PREFIX + "flood_bans", "Source addresses banned by the "
                                  "flood guard", value=snap["flood_bans"])
        yield GaugeMetricFamily(PREFIX + "flood_banned_sources", "Source addresses banned now",
                                value=snap["flood_banned"])
        cpu = CounterMetricFamily(PREFIX + "worker_cpu_seconds",
                                  "CPU time (user + system) of each worker process",
                                  labels=["worker"])
        for worker, seconds in sorted(snap["cpu"].items()):
            cpu.add_metric([str(worker)], seconds)
        yield cpu
        histograms: dict[str, HistogramMetricFamily] = {}
        for key, (buckets, counts, hsum) in sorted(snap["histograms"].items()):
            hist = histograms.get(key[0])
            if hist is None:
                doc, labels = _HISTOGRAMS[key[0]]
                hist = histograms[key[0]] = HistogramMetricFamily(PREFIX + key[0], doc,
                                                                  labels=list(labels))
            h = LatencyHistogram(buckets)
            h.counts, h.sum = counts, hsum
            hist.add_metric(list(key[1:]), h.cumulative(), h.sum)
        yield from histograms.values()
        services = app.engine.services if app.engine is not None else None
        auth = services.authenticator if services is not None else None
        if auth is not None:
            yield GaugeMetricFamily(PREFIX + "inventory_entries",
                                    "Numbers and ranges in the inventory",
                                    value=len(auth.inventory))
            yield GaugeMetricFamily(PREFIX + "inventory_version",
                                    "Version of the inventory in memory",
                                    value=auth.inventory.version)
            expiry = GaugeMetricFamily(PREFIX + "signing_certificate_expiry_seconds",
                                       "Seconds until our signing certificate expires",
                                       labels=["identity"])
            now = time.time()
            for name, not_after in (app.parts.expiry if app.parts is not None else {}).items():
                expiry.add_metric([name], not_after - now)
            yield expiry
            # ACME renewal (identities with acme = true; the families are always there)
            renewals = CounterMetricFamily(PREFIX + "certificate_renewals",
                                           "Signing certificates got by ACME",
                                           labels=["identity"])
            failures = CounterMetricFamily(PREFIX + "certificate_renewal_failures",
                                           "Failed attempts to get a signing certificate",
                                           labels=["identity"])
            renewer = app.renewer
            if renewer is not None:
                for identity in renewer.identities():
                    renewals.add_metric([identity.name], renewer.renewals[identity.name])
                    failures.add_metric([identity.name], renewer.failures[identity.name])
            yield renewals
            yield failures
        if app.shared is not None:
            yield GaugeMetricFamily(PREFIX + "shared_health_up",
                                    "1 while number health is shared in Redis, 0 while this "
                                    "instance decides alone", value=int(app.shared.up))
        if app.health is not None:  # every worker holds the whole replica: this one's
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
        if services is not None and services.verification is not None:
            hits, misses, entries = snap["cache"]
            lookups = CounterMetricFamily(PREFIX + "x5u_cache_lookups",
                                          "Certificate cache lookups", labels=["result"])
            lookups.add_metric(["hit"], hits)
            lookups.add_metric(["miss"], misses)
            yield lookups
            yield GaugeMetricFamily(PREFIX + "x5u_cache_entries", "Cached credentials",
                                    value=entries)


def make_registry(app: Application) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(app))
    registry.register(ProcessCollector(registry=None))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
