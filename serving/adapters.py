"""The adapter cache: four tiers sized in bytes, LRU with pinning, one load per adapter at a time.

    device  adapters resident next to the base model, ready to be copied into a batch slot
    host    converted adapters in host memory (on a CPU-only machine the two are the same RAM, with
            separate budgets, so the policy is the one a GPU deployment runs)
    disk    verified adapter files in the local cache directory
    store   the artifact store (file:// or s3://), the source of truth

A request *leases* its adapter: a lease pins the device entry until the sequence ends, so an adapter in
use is never evicted and the device tier never holds more than its budget (a request that would need an
unpinned byte that does not exist waits, bounded by its deadline, then gets 429). The first request for an
adapter loads it; concurrent first requests wait for that one load (single-flight, per key). Files are
checked against the SHA-256 recorded in the artifact manifest on download and again when read back from
the disk tier; only `.safetensors` and `.json` files are ever fetched. Deleting a model evicts it from
every tier (a pinned entry goes when its last lease ends).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from adapters.files import adapter_files
from contracts.errors import InvalidRequest, Overloaded
from serving.adapter_weights import AdapterWeights
from storage import ArtifactStore
from storage.manifest import download_artifact

log = logging.getLogger(__name__)

_VERIFIED = "verified.json"


@dataclass(frozen=True)
class AdapterRef:
    """Where an adapter lives: its artifact prefix and the SHA-256 of its manifest (the cache key)."""

    prefix: str
    manifest_sha256: str
    #: the model name users know it by (metrics labels)
    label: str

    @property
    def key(self) -> str:
        return f"{self.prefix}@{self.manifest_sha256}"


class CacheObserver(Protocol):
    def load(self, label: str, source: str, seconds: float) -> None: ...

    def hit(self, label: str, tier: str) -> None: ...

    def evict(self, label: str, tier: str) -> None: ...

    def resident(self, tier: str, label: str, nbytes: int) -> None: ...


class _NullObserver:
    def load(self, label: str, source: str, seconds: float) -> None: ...

    def hit(self, label: str, tier: str) -> None: ...

    def evict(self, label: str, tier: str) -> None: ...

    def resident(self, tier: str, label: str, nbytes: int) -> None: ...


@dataclass
class _DeviceEntry:
    weights: AdapterWeights
    label: str
    pins: int = 0
    doomed: bool = False


class AdapterLease:
    """A pinned device-tier adapter; `release()` once when the sequence using it is done."""

    def __init__(self, cache: AdapterCache, key: str, weights: AdapterWeights) -> None:
        self._cache = cache
        self.key = key
        self.weights = weights
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._cache._unpin(self.key)


class AdapterCache:
    def __init__(self, store: ArtifactStore, directory: Path, *, device_bytes: int, host_bytes: int,
                 disk_bytes: int, observer: CacheObserver | None = None) -> None:
        self.store = store
        self.directory = directory
        self.device_bytes = device_bytes
        self.host_bytes = host_bytes
        self.disk_bytes = disk_bytes
        self.observer: CacheObserver = observer or _NullObserver()
        self._lock = threading.Condition()
        self._device: OrderedDict[str, _DeviceEntry] = OrderedDict()
        self._host: OrderedDict[str, tuple[AdapterWeights, str]] = OrderedDict()
        self._loading: dict[str, threading.Event] = {}
        self._deleted_prefixes: set[str] = set()
        self.loads = 0  # adapters converted from files (disk or store); tests count these
        directory.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------- leases
    def lease(self, ref: AdapterRef, convert: Callable[[Path], AdapterWeights], *, deadline: float) -> AdapterLease:
        """Pin `ref`'s adapter in the device tier, loading it through the tiers if needed."""
        return self._lease(ref.key, ref.label, lambda: self._host_weights(ref, convert), deadline)

    def lease_derived(self, key: str, label: str, build: Callable[[], AdapterWeights], *,
                      deadline: float) -> AdapterLease:
        """Pin an adapter computed from others (a weighted composition); built once per key."""
        return self._lease(key, label, build, deadline)

    def _lease(self, key: str, label: str, produce: Callable[[], AdapterWeights], deadline: float) -> AdapterLease:
        while True:
            with self._lock:
                entry = self._device.get(key)
                if entry is not None and not entry.doomed:
                    entry.pins += 1
                    self._device.move_to_end(key)
                    self.observer.hit(label, "device")
                    return AdapterLease(self, key, entry.weights)
                loading = self._loading.get(key)
                if loading is None:
                    loading = self._loading[key] = threading.Event()
                    owner = True
                else:
                    owner = False
            if not owner:
                if not loading.wait(max(0.0, deadline - time.monotonic())):
                    raise Overloaded("Timed out waiting for an adapter to load; retry shortly.", retry_after=2)
                continue  # the loader finished (or failed): look again
            try:
                weights = produce()
                with self._lock:
                    self._make_room(weights.nbytes, deadline)
                    entry = _DeviceEntry(weights, label, pins=1)
                    self._device[key] = entry
                    self.observer.resident("device", label, weights.nbytes)
                return AdapterLease(self, key, weights)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
                    loading.set()
                    self._lock.notify_all()

    def _make_room(self, nbytes: int, deadline: float) -> None:
        """Evict unpinned device entries (LRU first) until `nbytes` fit (caller holds the lock)."""
        if nbytes > self.device_bytes:
            raise InvalidRequest(f"The adapter needs {nbytes} bytes, more than the whole device adapter budget "
                                 f"({self.device_bytes}, FTAAS_SERVING_ADAPTER_DEVICE_BYTES).",
                                 code="adapter_too_large", param="model")
        while self.device_resident_bytes() + nbytes > self.device_bytes:
            victim = next((k for k, e in self._device.items() if e.pins == 0), None)
            if victim is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Overloaded("Every resident adapter is in use; retry shortly.", retry_after=2)
                self._lock.wait(min(left, 0.5))
                continue
            entry = self._device.pop(victim)
            self.observer.evict(entry.label, "device")
            self.observer.resident("device", entry.label, 0)

    def _unpin(self, key: str) -> None:
        with self._lock:
            entry = self._device.get(key)
            if entry is None:
                return
            entry.pins -= 1
            if entry.pins == 0 and entry.doomed:
                del self._device[key]
                self.observer.resident("device", entry.label, 0)
            self._lock.notify_all()

    # ------------------------------------------------------------------------- host and disk
    def _host_weights(self, ref: AdapterRef, convert: Callable[[Path], AdapterWeights]) -> AdapterWeights:
        with self._lock:
            cached = self._host.get(ref.key)
            if cached is not None:
                self._host.move_to_end(ref.key)
                self.observer.hit(ref.label, "host")
                return cached[0]
        started = time.monotonic()
        directory, source = self._disk_directory(ref)
        weights = convert(directory)
        self.loads += 1
        with self._lock:
            if ref.prefix in self._deleted_prefixes:
                raise InvalidRequest("The model was deleted.", code="model_not_found", param="model")
            self._host[ref.key] = (weights, ref.label)
            self.observer.resident("host", ref.label, weights.nbytes)
            while self._host and sum(w.nbytes for w, _ in self._host.values()) > self.host_bytes:
                _, (evicted, label) = self._host.popitem(last=False)
                self.observer.evict(label, "host")
                self.observer.resident("host", label, 0)
        self.observer.load(ref.label, source, time.monotonic() - started)
        return weights

    def local_directory(self, ref: AdapterRef) -> Path:
        """The adapter's verified files on local disk (fetched from the store if absent), for readers other
        than the engine (serving.reference)."""
        return self._disk_directory(ref)[0]

    def _disk_directory(self, ref: AdapterRef) -> tuple[Path, str]:
        """The adapter's verified files on local disk, fetched from the store if absent."""
        directory = self.directory / hashlib.sha256(ref.key.encode()).hexdigest()[:32]
        record = directory / _VERIFIED
        if record.exists():
            expected = json.loads(record.read_text())["files"]
            if all(_sha256(directory / name) == digest for name, digest in expected.items()):
                directory.touch()
                self.observer.hit(ref.label, "disk")
                return directory, "disk"
            log.warning("adapter cache %s failed verification; fetching again", directory)
            shutil.rmtree(directory, ignore_errors=True)
        staging = directory.with_name(directory.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        # The weights are dense, or ComPEFT-compressed (adapters.compress): fetch whichever it has.
        manifest = download_artifact(self.store, ref.prefix, ref.manifest_sha256, staging,
                                     allowed_suffixes=(".safetensors", ".json"), only=adapter_files)
        files = adapter_files(set(manifest["files"]))
        (staging / _VERIFIED).write_text(json.dumps(
            {"prefix": ref.prefix, "files": {name: manifest["files"][name]["sha256"] for name in files}}))
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
        self._trim_disk(keep=directory)
        return directory, "store"

    def _trim_disk(self, keep: Path) -> None:
        entries = [p for p in self.directory.iterdir() if p.is_dir() and not p.name.endswith(".partial")]
        sizes = {p: sum(f.stat().st_size for f in p.iterdir()) for p in entries}
        total = sum(sizes.values())
        for path in sorted(entries, key=lambda p: p.stat().st_mtime):
            if total <= self.disk_bytes:
                break
            if path == keep:
                continue
            shutil.rmtree(path, ignore_errors=True)
            total -= sizes[path]
            self.observer.evict("", "disk")

    # --------------------------------------------------------------------------------- eviction
    def evict_prefix(self, prefix: str) -> None:
        """Drop every tier's copy of the adapters stored under `prefix` (the model was deleted)."""
        with self._lock:
            self._deleted_prefixes.add(prefix)
            for key in [k for k in self._host if _mentions(k, prefix)]:
                _, label = self._host.pop(key)
                self.observer.resident("host", label, 0)
            for key, entry in list(self._device.items()):
                if _mentions(key, prefix):
                    if entry.pins:
                        entry.doomed = True
                    else:
                        del self._device[key]
                        self.observer.resident("device", entry.label, 0)
        for path in self.directory.iterdir():
            record = path / _VERIFIED
            if path.is_dir() and record.exists() and json.loads(record.read_text()).get("prefix") == prefix:
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------------------------ sizes
    def device_resident_bytes(self) -> int:
        return sum(e.weights.nbytes for e in self._device.values())

    def host_resident_bytes(self) -> int:
        return sum(w.nbytes for w, _ in self._host.values())

    def disk_resident_bytes(self) -> int:
        return sum(f.stat().st_size for p in self.directory.iterdir() if p.is_dir() for f in p.iterdir())

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"device": {k: e.pins for k, e in self._device.items()}, "host": list(self._host),
                    "device_bytes": self.device_resident_bytes(), "host_bytes": self.host_resident_bytes()}


def _mentions(key: str, prefix: str) -> bool:
    """Whether a cache key (an adapter's, or a composition's listing its parts) involves `prefix`."""
    return f"{prefix}@" in key


def _sha256(path: Path) -> str:
    if not path.exists():
        return ""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
