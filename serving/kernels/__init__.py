"""Decode kernels: the work of a decode step of few rows, compiled for this CPU (`products.c`).

A decode step of one stream multiplies one row by every weight of the model: it reads each weight once and
waits on memory. The library products torch offers for that (oneDNN's linear with pre-packed bf16 weights,
`_weight_int8pack_mm` for int8 weights) read weights at 17-23 GB/s on the 2-core EPYCs measured, where the
same machine streams 31-34 GB/s (docs/serving.md, "Decode kernels"). `products.c` reads each weight row from
start to end, one sequential stream per thread, and reaches the machine's speed: 1.5x oneDNN for one bf16
row, 1.7x torch for one int8 row, level with them at 4-8 rows and slower beyond, so the engine uses it for at
most `MAX_ROWS` rows and the library products for more. The rest of a layer's work for one row (RMSNorm,
RoPE with the cache write and attention, the MLP's activation) costs torch a dozen operator calls, about as
much time again as the products for a small model; here it is one call each.

Why hand-written: no library on PyPI gives a bandwidth-bound few-row product for torch tensors on a CPU
(llama.cpp's ggml has one, inside a 15-minute build; torch.compile's inductor generated slower code than eager
here). Why C through ctypes and not a torch extension: a torch extension compiles against torch's headers for
a minute on 2 cores; this file compiles in half a second with the system's C compiler (`cc`), for the CPU it
runs on (`-march=native`), once per machine: the library is cached by source, compiler and CPU. Where no
compiler is installed (the container image's runtime stage), the most capable prebuilt library this CPU's
flags allow is loaded (the image's builder stage compiles one per x86-64 level: `python -m serving.kernels`,
`PREBUILT`); where there is none either, or the compiler fails, `load` returns None and the engine keeps
torch's operators.

The OpenMP runtime is the one torch loaded (the library names libgomp.so.1, which the dynamic linker finds
already loaded), so the calling thread's torch thread count bounds the kernel's threads too; `load` refuses a
library that would bring a second runtime into the process.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("products.c")
#: The most rows the kernels compute (products.c's MAX_ROWS): the engine's products of more rows use the
#: library's, which win from 8-16 rows on (measured, docs/serving.md "Decode kernels").
MAX_ROWS = 8
#: The kernels need the inner size a multiple of this (their vector loop has no remainder).
INNER_MULTIPLE = 32
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
#: Libraries built ahead for machines without a compiler: name -> (the CPU flags they need, /proc/cpuinfo's
#: names; their -march flags), most capable first.
PREBUILT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "avx512_bf16": (("avx512f", "avx512bw", "avx512vl", "avx512_bf16"), ("-march=x86-64-v4", "-mavx512bf16")),
    "avx512f": (("avx512f", "avx512bw", "avx512vl"), ("-march=x86-64-v4",)),
    "avx2": (("avx2", "fma", "f16c"), ("-march=x86-64-v3",)),
}
#: Where the package keeps prebuilt libraries (written by `python -m serving.kernels`).
PREBUILT_DIR = Path(__file__).with_name("prebuilt")
_DTYPES = {torch.bfloat16: 0, torch.float32: 1}


@dataclass(frozen=True)
class Products:
    """The loaded kernels. Each product returns None where it cannot compute the operands (too many rows, an
    inner size not a multiple of INNER_MULTIPLE, a dtype it does not take): the caller then uses the library's."""

    library: ctypes.CDLL
    isa: str
    path: Path

    def bf16(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        """x [rows, k] (bfloat16 or float32) @ weight.T, weight bfloat16 [n, k] contiguous; in x's dtype."""
        rows, k = x.shape
        if (rows > MAX_ROWS or k % INNER_MULTIPLE or x.dtype not in _DTYPES or weight.dtype != torch.bfloat16
                or x.device.type != "cpu" or not weight.is_contiguous()):
            return None
        x = x.contiguous()
        out = torch.empty(rows, weight.shape[0], dtype=x.dtype)
        failed = self.library.ftaas_products_bf16(x.data_ptr(), rows, _DTYPES[x.dtype], weight.data_ptr(),
                                                 weight.shape[0], k, out.data_ptr())
        return None if failed else out

    def int8(self, x: torch.Tensor, values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor | None:
        """(x [rows, k] @ values.T) * scales: values int8 [n, k] contiguous, scales float32 [n]; in x's dtype. x
        is quantized to int8 per block of 32 (scale max|x| / 127, as llama.cpp's q8_0 quantizes activations) and
        each block's products summed exactly in int32: on a CPU without an int8 or bf16 dot product into float32
        (AVX2) widening each weight to float32 cost more than reading it (docs/serving.md, "Decode kernels")."""
        rows, k = x.shape
        if (rows > MAX_ROWS or k % INNER_MULTIPLE or x.dtype not in _DTYPES or values.dtype != torch.int8
                or scales.dtype != torch.float32 or x.device.type != "cpu" or not values.is_contiguous()):
            return None
        x = x.contiguous()
        out = torch.empty(rows, values.shape[0], dtype=x.dtype)
        failed = self.library.ftaas_products_int8(x.data_ptr(), rows, _DTYPES[x.dtype], values.data_ptr(),
                                                 scales.data_ptr(), values.shape[0], k, out.data_ptr())
        return None if failed else out

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
        """Llama's RMSNorm of bfloat16 rows x [rows, h] (at most MAX_ROWS): weight * (x normalised in float32,
        rounded to bfloat16), as serving.model computes it, in one call instead of torch's half a dozen."""
        if (x.dim() != 2 or x.shape[0] > MAX_ROWS or x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16
                or x.device.type != "cpu" or not weight.is_contiguous()):
            return None
        x = x.contiguous()
        out = torch.empty_like(x)
        self.library.ftaas_rms_norm_bf16(x.data_ptr(), x.shape[0], x.shape[1], weight.data_ptr(), eps,
                                         out.data_ptr())
        return out

    def decode_rope_attention(self, qkv: torch.Tensor, heads: int, cos: torch.Tensor, signed_sin: torch.Tensor,
                              layer_cache: torch.Tensor, position: int, first: int, scale: float
                              ) -> torch.Tensor | None:
        """A decode row's attention from its fused q/k/v product, bfloat16: queries and keys rotated by RoPE
        (cos and signed sin of the row's position, [head_dim] each: serving.model._rope's operations, bitwise),
        the key and value stored at `position` of layer_cache [2, kv_heads, capacity, head_dim], then
        `decode_attention` over [first, position]. qkv [(heads + 2 kv_heads) * head_dim]; returns
        [1, heads, head_dim]. None (nothing written) where the operands do not fit."""
        kv_heads, dim = layer_cache.shape[1], layer_cache.shape[-1]
        if (qkv.dtype != torch.bfloat16 or layer_cache.dtype != torch.bfloat16 or cos.dtype != torch.bfloat16
                or signed_sin.dtype != torch.bfloat16 or qkv.device.type != "cpu" or layer_cache.stride(-1) != 1
                or qkv.numel() != (heads + 2 * kv_heads) * dim or cos.numel() != dim or signed_sin.numel() != dim
                or position >= layer_cache.shape[2]):
            return None
        qkv, cos, signed_sin = qkv.contiguous(), cos.contiguous(), signed_sin.contiguous()
        out = torch.empty(1, heads, dim, dtype=qkv.dtype)
        failed = self.library.ftaas_decode_rope_attention_bf16(
            qkv.data_ptr(), heads, kv_heads, dim, cos.data_ptr(), signed_sin.data_ptr(), layer_cache[0].data_ptr(),
            layer_cache[1].data_ptr(), layer_cache.stride(1), layer_cache.stride(2), position, first, scale,
            out.data_ptr())
        return None if failed else out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor | None:
        """The gated MLP's silu(gate) * up of bfloat16 rows gate_up [rows, 2n] (gate, then up), rounded as
        torch's bfloat16 operations round: [rows, n]."""
        if (gate_up.dim() != 2 or gate_up.shape[0] > MAX_ROWS or gate_up.dtype != torch.bfloat16
                or gate_up.device.type != "cpu" or gate_up.shape[1] % 2):
            return None
        gate_up = gate_up.contiguous()
        out = torch.empty(gate_up.shape[0], gate_up.shape[1] // 2, dtype=gate_up.dtype)
        self.library.ftaas_silu_mul_bf16(gate_up.data_ptr(), gate_up.shape[0], gate_up.shape[1] // 2, out.data_ptr())
        return out

    def decode_attention(self, q: torch.Tensor, layer_cache: torch.Tensor, first: int, length: int,
                         scale: float) -> torch.Tensor | None:
        """One decode row's attention, bfloat16: q [heads, head_dim] over a sequence's cached keys and values
        layer_cache [2, kv_heads, capacity, head_dim] at positions [first, length) (grouped-query: head h reads
        KV head h // (heads // kv_heads)); returns [1, heads, head_dim]. Scores, softmax and the weighted sum in
        float32, as torch's flash attention for CPU computes them."""
        heads, dim = q.shape
        if (q.dtype != torch.bfloat16 or layer_cache.dtype != torch.bfloat16 or q.device.type != "cpu"
                or layer_cache.stride(-1) != 1 or layer_cache.shape[-1] != dim):
            return None
        q = q.contiguous()
        out = torch.empty(1, heads, dim, dtype=q.dtype)
        failed = self.library.ftaas_decode_attention_bf16(
            q.data_ptr(), heads, layer_cache.shape[1], dim, layer_cache[0].data_ptr(), layer_cache[1].data_ptr(),
            layer_cache.stride(1), layer_cache.stride(2), first, length, scale, out.data_ptr())
        return None if failed else out


_loaded: dict[tuple[Path | None, Path], Products | None] = {}
_lock = threading.Lock()


def load(cache_dir: Path | None, prebuilt: Path = PREBUILT_DIR) -> Products | None:
    """The kernels compiled for this CPU (cached under `cache_dir/kernels`; where None, compiled into a private
    temporary folder of this process), or without a C compiler the most capable of those in `prebuilt` this
    CPU runs; None where there are none to load here (logged once per process)."""
    with _lock:
        if (cache_dir, prebuilt) not in _loaded:
            _loaded[cache_dir, prebuilt] = _build_and_load(cache_dir, prebuilt)
        return _loaded[cache_dir, prebuilt]


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def _fingerprint(compiler: str) -> str:
    """What the compiled library depends on: the source, the flags, the compiler and this CPU."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(FLAGS).encode())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=False)
    digest.update(version.stdout.encode())
    try:
        cpu = [line for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith(("model name", "flags"))][:2]
    except OSError:
        cpu = []
    digest.update("\n".join(cpu).encode())
    return digest.hexdigest()[:16]


def _build_and_load(cache_dir: Path | None, prebuilt_dir: Path) -> Products | None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        log.info("decode kernels not built: they are written for x86-64 (AVX2, AVX-512), not %s", platform.machine())
        return None
    compiler = _compiler()
    if compiler is None:
        prebuilt = _prebuilt(prebuilt_dir)
        if prebuilt is not None:
            return open_library(prebuilt)
        log.info("decode kernels not built: no C compiler (cc) on this machine and none prebuilt for its CPU; "
                 "library products are used")
        return None
    try:
        # Without a cache folder, a private one for this process: a shared temporary folder would let another
        # local user plant the library this process loads.
        folder = cache_dir / "kernels" if cache_dir is not None else Path(tempfile.mkdtemp(prefix="ftaas-kernels-"))
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"products-{_fingerprint(compiler)}.so"
        if not target.is_file():
            partial = folder / f".{target.name}.{os.getpid()}.tmp"
            result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(partial), "-lm"], capture_output=True,
                                    text=True, timeout=300, check=False)
            if result.returncode != 0:
                partial.unlink(missing_ok=True)
                log.warning("decode kernels not built (%s failed: %s); library products are used", compiler,
                            result.stderr.strip()[-500:])
                return None
            partial.replace(target)  # atomic: processes building at once each install a whole file
        return open_library(target)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("decode kernels not built or loaded (%s); library products are used", exc)
        return None


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _prebuilt(folder: Path) -> Path | None:
    """The most capable prebuilt library in `folder` this CPU can run, if any."""
    flags = _cpu_flags()
    for name, (needed, _) in PREBUILT.items():
        candidate = folder / f"products-{name}.so"
        if candidate.is_file() and set(needed) <= flags:
            return candidate
    return None


def prebuild(folder: Path, compiler: str = "cc") -> list[Path]:
    """Compile one library per PREBUILT level into `folder` (for an image whose runtime has no compiler)."""
    folder.mkdir(parents=True, exist_ok=True)
    built = []
    for name, (_, march) in PREBUILT.items():
        target = folder / f"products-{name}.so"
        flags = [flag for flag in FLAGS if not flag.startswith("-march")]
        subprocess.run([compiler, *flags, *march, str(SOURCE), "-o", str(target), "-lm"], check=True, timeout=300)
        built.append(target)
    return built


def _openmp_runtimes() -> set[str]:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in maps.splitlines() if "libgomp" in line or "libiomp" in line}


def open_library(path: Path) -> Products | None:
    """A compiled library's kernels (None where it would add an OpenMP runtime or has no vector code)."""
    before = _openmp_runtimes()
    library = ctypes.CDLL(str(path))
    after = _openmp_runtimes()
    if before and after != before:  # a second OpenMP runtime: two thread pools, each blind to the other
        log.warning("decode kernels not used: loading them added an OpenMP runtime (%s) beside torch's (%s)",
                    sorted(after - before), sorted(before))
        return None
    pointer, size, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    library.ftaas_products_bf16.argtypes = [pointer, size, flag, pointer, size, size, pointer]
    library.ftaas_products_bf16.restype = ctypes.c_int
    library.ftaas_products_int8.argtypes = [pointer, size, flag, pointer, pointer, size, size, pointer]
    library.ftaas_products_int8.restype = ctypes.c_int
    library.ftaas_rms_norm_bf16.argtypes = [pointer, size, size, pointer, ctypes.c_float, pointer]
    library.ftaas_rms_norm_bf16.restype = ctypes.c_int
    library.ftaas_decode_attention_bf16.argtypes = [pointer, size, size, size, pointer, pointer, size, size, size,
                                                    size, ctypes.c_float, pointer]
    library.ftaas_decode_attention_bf16.restype = ctypes.c_int
    library.ftaas_decode_rope_attention_bf16.argtypes = [pointer, size, size, size, pointer, pointer, pointer,
                                                         pointer, size, size, size, size, ctypes.c_float, pointer]
    library.ftaas_decode_rope_attention_bf16.restype = ctypes.c_int
    library.ftaas_silu_mul_bf16.argtypes = [pointer, size, size, pointer]
    library.ftaas_silu_mul_bf16.restype = ctypes.c_int
    library.ftaas_products_isa.restype = ctypes.c_char_p
    isa = library.ftaas_products_isa().decode()
    if isa == "scalar":  # compiled without vector instructions: slower than the library products
        log.info("decode kernels not used: this CPU has neither AVX2 nor AVX-512")
        return None
    log.info("decode kernels built for %s (%s)", isa, path)
    return Products(library, isa, path)

