"""The tiered adapter cache: byte budgets, LRU with pinning, single-flight loads, integrity, eviction."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from contracts.errors import IntegrityFailure, Overloaded
from serving.adapter_weights import read_adapter
from serving.adapters import AdapterCache, AdapterRef
from storage.local import LocalArtifactStore
from storage.manifest import publish_directory
from tests.serving.conftest import AdapterFactory, forward_for


class Recorder:
    """A CacheObserver that also checks the device budget every time residency changes."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, str]] = []
        self.evictions: list[tuple[str, str]] = []
        self.hits: list[tuple[str, str]] = []
        self.cache: AdapterCache | None = None
        self.peak_device = 0

    def load(self, label: str, source: str, seconds: float) -> None:
        self.loads.append((label, source))

    def hit(self, label: str, tier: str) -> None:
        self.hits.append((label, tier))

    def evict(self, label: str, tier: str) -> None:
        self.evictions.append((label, tier))

    def resident(self, tier: str, label: str, nbytes: int) -> None:
        assert self.cache is not None
        self.peak_device = max(self.peak_device, self.cache.device_resident_bytes())


@pytest.fixture
def published(tmp_path: Path, make_adapter: AdapterFactory) -> tuple[Any, list[AdapterRef]]:
    store = LocalArtifactStore((tmp_path / "store").as_uri())
    refs = []
    for index in range(8):
        artifact = publish_directory(store, f"models/m{index}/", make_adapter(300 + index), {"kind": "adapter"})
        refs.append(AdapterRef(artifact.prefix, artifact.manifest_sha256, f"ft:m{index}"))
    return store, refs


def _cache(store: Any, tmp_path: Path, *, device: int, host: int = 1 << 30, disk: int = 1 << 30) -> tuple[AdapterCache, Recorder]:
    recorder = Recorder()
    cache = AdapterCache(store, tmp_path / "cache", device_bytes=device, host_bytes=host, disk_bytes=disk,
                         observer=recorder)
    recorder.cache = cache
    return cache, recorder


def test_a_budget_smaller_than_the_adapter_set_evicts_and_stays_correct(
        base_model: Any, published: tuple[Any, list[AdapterRef]], tmp_path: Path) -> None:
    store, refs = published
    forward = forward_for(base_model)
    convert = _converter(forward)
    size = convert(refs[0])(_any_dir(store, refs[0], tmp_path)).nbytes
    budget = 3 * size + size // 2  # room for three of the eight
    cache, recorder = _cache(store, tmp_path, device=budget, host=2 * size, disk=9 * size)
    reference = {ref.key: read_adapter(_any_dir(store, ref, tmp_path), forward, key=ref.key, max_rank=16)
                 for ref in refs}
    for round_ in range(3):
        for ref in refs:
            lease = cache.lease(ref, convert(ref), deadline=time.monotonic() + 30)
            got = lease.weights
            want = reference[ref.key]
            assert all(g[k].a.equal(w[k].a) and g[k].b.equal(w[k].b) for g, w in zip(got.layers, want.layers, strict=True)
                       for k in w), f"round {round_}: {ref.label} has the wrong weights"
            lease.release()
            assert cache.device_resident_bytes() <= budget
            assert cache.host_resident_bytes() <= 2 * size
            assert cache.disk_resident_bytes() <= 9 * size
    assert recorder.peak_device <= budget
    assert ("ft:m0", "device") in recorder.evictions and any(t == "host" for _, t in recorder.evictions)
    sources = [source for _, source in recorder.loads]
    assert sources[:8] == ["store"] * 8 and set(sources[8:]) == {"disk"}, \
        "later rounds reload evicted adapters from the local disk tier"

    small_disk, small_recorder = _cache(store, tmp_path / "small", device=budget, host=0, disk=2 * size)
    for ref in refs:
        small_disk.lease(ref, convert(ref), deadline=time.monotonic() + 30).release()
        assert small_disk.disk_resident_bytes() <= 2 * size
    assert any(tier == "disk" for _, tier in small_recorder.evictions)


def test_a_pinned_adapter_is_never_evicted_and_a_full_device_tier_waits_then_refuses(
        base_model: Any, published: tuple[Any, list[AdapterRef]], tmp_path: Path) -> None:
    store, refs = published
    forward = forward_for(base_model)
    convert = _converter(forward)
    size = convert(refs[0])(_any_dir(store, refs[0], tmp_path)).nbytes
    cache, _ = _cache(store, tmp_path, device=size + size // 2)
    held = cache.lease(refs[0], convert(refs[0]), deadline=time.monotonic() + 30)
    with pytest.raises(Overloaded):
        cache.lease(refs[1], convert(refs[1]), deadline=time.monotonic() + 0.5)
    assert refs[0].key in cache.snapshot()["device"]
    threading.Timer(0.3, held.release).start()  # the waiting lease gets the space when the pin goes
    second = cache.lease(refs[1], convert(refs[1]), deadline=time.monotonic() + 10)
    assert list(cache.snapshot()["device"]) == [refs[1].key]
    second.release()


def test_twenty_concurrent_first_requests_load_an_adapter_once(
        base_model: Any, published: tuple[Any, list[AdapterRef]], tmp_path: Path) -> None:
    store, refs = published
    forward = forward_for(base_model)
    cache, recorder = _cache(store, tmp_path, device=1 << 30)
    conversions = []

    def convert(directory: Path) -> Any:
        conversions.append(directory)
        time.sleep(0.2)  # a slow load, so that the others arrive while it runs
        return read_adapter(directory, forward, key=refs[2].key, max_rank=16)

    barrier = threading.Barrier(20)
    leases: list[Any] = []

    def first_request() -> None:
        barrier.wait()
        leases.append(cache.lease(refs[2], convert, deadline=time.monotonic() + 30))

    threads = [threading.Thread(target=first_request) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(leases) == 20 and len({id(lease.weights) for lease in leases}) == 1
    assert len(conversions) == 1 and recorder.loads == [("ft:m2", "store")]
    assert cache.snapshot()["device"] == {refs[2].key: 20}
    for lease in leases:
        lease.release()
    assert cache.snapshot()["device"] == {refs[2].key: 0}


def test_integrity_is_checked_on_every_load_and_deletion_evicts_every_tier(
        base_model: Any, published: tuple[Any, list[AdapterRef]], tmp_path: Path) -> None:
    store, refs = published
    forward = forward_for(base_model)
    cache, recorder = _cache(store, tmp_path, device=1 << 30, host=0)  # host 0: every lease reads the disk tier

    def convert(directory: Path) -> Any:
        return read_adapter(directory, forward, key=refs[3].key, max_rank=16)

    cache.lease(refs[3], convert, deadline=time.monotonic() + 30).release()
    cache.evict_prefix(refs[4].prefix)  # unrelated: nothing happens to ref 3
    cached = next(p for p in (tmp_path / "cache").iterdir() if (p / "adapter_model.safetensors").exists())
    # A corrupted local copy is detected and fetched again from the store.
    weights = cached / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    cache._device.clear()
    cache.lease(refs[3], convert, deadline=time.monotonic() + 30).release()
    assert [source for _, source in recorder.loads] == ["store", "store"]

    # A corrupted stored object fails the load with an integrity error; nothing corrupt is served.
    stored = store.root / refs[5].prefix / "adapter_model.safetensors"
    stored.write_bytes(stored.read_bytes()[:-8] + b"\1" * 8)
    with pytest.raises(IntegrityFailure):
        cache.lease(refs[5], convert, deadline=time.monotonic() + 30)

    cache.evict_prefix(refs[3].prefix)
    assert refs[3].key not in cache.snapshot()["device"] and not cached.exists()


def _converter(forward: Any) -> Any:
    """convert(ref) -> the function the cache calls to turn ref's downloaded directory into weights."""
    def convert(ref: AdapterRef) -> Any:
        return lambda directory: read_adapter(directory, forward, key=ref.key, max_rank=16)

    return convert


def _any_dir(store: Any, ref: AdapterRef, tmp_path: Path) -> Path:
    """A verified local copy of an artifact (for computing reference weights)."""
    from storage.manifest import download_artifact

    directory = tmp_path / "reference" / ref.prefix.strip("/").replace("/", "_")
    if not directory.exists():
        download_artifact(store, ref.prefix, ref.manifest_sha256, directory)
    return directory
