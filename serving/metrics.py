"""Prometheus metrics of the serving engine (`GET /metrics`, text exposition format).

One registry per process (not the library's global one), so several apps in one test process do not
collide. `/metrics` answers without a key (Prometheus scrapes it), so no series names a tenant: labels are
the base model, the tier or source of an adapter, a finish or rejection reason, never a fine-tuned model's
name (which carries the project and suffix). Per-adapter figures are aggregated per tier.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.engine import EngineObserver, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("ftaas_serving_queue_depth", "Sequences waiting for a batch slot.",
                                 ["base_model"], registry=r)
        self.batch_size = Gauge("ftaas_serving_running_sequences", "Sequences in the running batch.",
                                ["base_model"], registry=r)
        self.steps = Counter("ftaas_serving_engine_steps", "Engine forward passes.", ["base_model"], registry=r)
        self.ttft = Histogram("ftaas_serving_time_to_first_token_seconds", "Queueing + prefill until the first token.",
                              ["base_model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.token_rate = Histogram("ftaas_serving_output_tokens_per_second", "Decode speed of one sequence.",
                                    ["base_model"], buckets=_RATE_BUCKETS, registry=r)
        self.tokens = Counter("ftaas_serving_output_tokens", "Generated tokens.", ["base_model"], registry=r)
        self.sequences = Counter("ftaas_serving_sequences", "Finished sequences by reason.",
                                 ["base_model", "finish_reason"], registry=r)
        self.rejected = Counter("ftaas_serving_rejected_requests", "Requests refused by back-pressure.",
                                ["base_model", "reason"], registry=r)
        self.adapter_loads = Counter("ftaas_serving_adapter_loads", "Adapters loaded, by source tier.",
                                     ["source"], registry=r)
        self.adapter_load_seconds = Histogram("ftaas_serving_adapter_load_seconds", "Time to load an adapter.",
                                              ["source"], buckets=_LATENCY_BUCKETS, registry=r)
        self.adapter_hits = Counter("ftaas_serving_adapter_hits", "Adapter lookups served by a tier.",
                                    ["tier"], registry=r)
        self.adapter_evictions = Counter("ftaas_serving_adapter_evictions", "Adapters evicted from a tier.",
                                         ["tier"], registry=r)
        self.adapter_bytes = Gauge("ftaas_serving_adapter_resident_bytes", "Adapter bytes resident per tier.",
                                   ["tier"], registry=r)
        self.adapters_resident = Gauge("ftaas_serving_adapters_resident", "Adapters resident per tier.",
                                       ["tier"], registry=r)
        self.engine_threads = Gauge("ftaas_serving_engine_threads", "Threads the engine's loop computes on now.",
                                    ["base_model"], registry=r)
        self.thread_budget = Gauge("ftaas_machine_thread_budget", "The machine's thread plan: threads of each "
                                   "kind of work alone and beside the other (contracts.machine).",
                                   ["kind", "state"], registry=r)
        #: (tier, adapter) -> bytes: the per-tier sums are computed from it, the adapters never exported
        self._resident: dict[tuple[str, str], int] = {}
        self._resident_lock = threading.Lock()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # CacheObserver
    def load(self, label: str, source: str, seconds: float) -> None:
        self.adapter_loads.labels(source).inc()
        self.adapter_load_seconds.labels(source).observe(seconds)

    def hit(self, label: str, tier: str) -> None:
        self.adapter_hits.labels(tier).inc()

    def evict(self, label: str, tier: str) -> None:
        self.adapter_evictions.labels(tier).inc()

    def resident(self, tier: str, label: str, nbytes: int) -> None:
        with self._resident_lock:
            if nbytes:
                self._resident[(tier, label)] = nbytes
            else:
                self._resident.pop((tier, label), None)
            in_tier = [size for (t, _), size in self._resident.items() if t == tier]
            self.adapter_bytes.labels(tier).set(sum(in_tier))
            self.adapters_resident.labels(tier).set(len(in_tier))

    def plan(self, plan: dict[str, int | bool]) -> None:
        for kind in ("serving", "batch"):
            for state in ("alone", "shared"):
                self.thread_budget.labels(kind, state).set(int(plan[f"{kind}_{state}"]))

    def engine_observer(self, base_model: str) -> EngineObserver:
        return _EngineMetrics(self, base_model)


class _EngineMetrics(EngineObserver):
    def __init__(self, metrics: ServingMetrics, base_model: str) -> None:
        self.metrics = metrics
        self.base_model = base_model

    def step(self, *, waiting: int, running: int) -> None:
        self.metrics.queue_depth.labels(self.base_model).set(waiting)
        self.metrics.batch_size.labels(self.base_model).set(running)
        self.metrics.steps.labels(self.base_model).inc()

    def threads(self, count: int) -> None:
        self.metrics.engine_threads.labels(self.base_model).set(count)

    def finished(self, sequence: Sequence, reason: str) -> None:
        label = self.base_model  # never the sequence's model: fine-tuned names are tenant data
        self.metrics.sequences.labels(label, reason).inc()
        self.metrics.tokens.labels(label).inc(len(sequence.generated))
        if sequence.first_token_at is not None:
            self.metrics.ttft.labels(label).observe(sequence.first_token_at - sequence.enqueued_at)
            decode = (sequence.finished_at or sequence.first_token_at) - sequence.first_token_at
            if len(sequence.generated) > 1 and decode > 0:
                self.metrics.token_rate.labels(label).observe((len(sequence.generated) - 1) / decode)
