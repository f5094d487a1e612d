"""The decode kernels (serving.kernels): built for this CPU by the system's C compiler, they compute each product
as the exact sum rounded once (within float32 summation), a row's result does not depend on the rows beside it,
they run on torch's OpenMP runtime with the calling thread's thread count, a machine without a compiler serves
with the library's products, and the engine decodes the real model with them as well as without them."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from basemodels.loader import BaseModelLoader
from basemodels.registry import BaseModelRegistry
from contracts.settings import PACKAGED_BASE_MODEL, PACKAGED_BASE_MODEL_SOURCE
from serving import kernels
from serving.model import LlamaForward, WeightFormat, build_step
from tests.serving.conftest import served_forward

X86 = platform.machine().lower() in ("x86_64", "amd64")
COMPILER = shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def products(model_cache_dir: Path) -> kernels.Products:
    built = kernels.load(model_cache_dir)
    if not (X86 and COMPILER):
        pytest.skip(f"the kernels are built on x86-64 with a C compiler; this is {platform.machine()}, "
                    f"compiler {COMPILER}")
    assert built is not None, "x86-64 with a C compiler: the kernels must build (see the log for the compiler's error)"
    return built


def _bf16_ulp(values: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers at each value (8 bits of mantissa)."""
    exponent = torch.floor(torch.log2(values.abs().clamp_min(2.0 ** -120)))
    return torch.pow(2.0, exponent - 7)


def _sum_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """What summing k float32 products may lose: k * 2^-24 * sum |x| |w| (a standard bound, generous)."""
    return x.shape[1] * 2.0 ** -24 * (x.double().abs() @ w.double().abs().T)


@pytest.mark.parametrize("inner", [32, 576, 1536])
def test_a_bf16_product_is_the_exact_sum_rounded_once(products: kernels.Products, inner: int) -> None:
    generator = torch.Generator().manual_seed(inner)
    for rows in range(1, kernels.MAX_ROWS + 1):
        w = torch.randn(67, inner, generator=generator).to(torch.bfloat16)
        x = torch.randn(rows, inner, generator=generator).to(torch.bfloat16)
        exact = x.double() @ w.double().T
        out = products.bf16(x, w)
        assert out is not None and out.dtype == torch.bfloat16 and out.shape == (rows, 67)
        error = (out.double() - exact).abs()
        assert (error <= _bf16_ulp(exact) / 2 + _sum_bound(x, w) * 1.01).all(), error.max()
        # float32 activations: a float32 result, no rounding to bfloat16
        out32 = products.bf16(x.float(), w)
        assert out32 is not None and out32.dtype == torch.float32
        assert ((out32.double() - exact).abs() <= _sum_bound(x, w) + 1e-30).all()


def _quantized_blocks(x: torch.Tensor) -> torch.Tensor:
    """x as the int8 kernel multiplies it, float64 [rows, k]: per block of 32, values rounded to nearest (ties to
    even) at 127 / max|x|, times max|x| / 127 (llama.cpp's q8_0 activations), each step in float32 as in C."""
    blocks = x.float().reshape(x.shape[0], -1, 32)
    top = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(top > 0, torch.tensor(127.0) / top, torch.zeros_like(top))
    values = torch.round(blocks * inverse)
    assert values.abs().max() <= 127
    return (values.double() * (top / 127.0).double()).reshape(x.shape)


@pytest.mark.parametrize("inner", [32, 96, 576, 1536])
def test_an_int8_product_is_the_exact_sum_of_int8_activation_blocks_times_the_rows_scale(
        products: kernels.Products, inner: int) -> None:
    """Activations quantized per block of 32 (an AVX-512 build multiplies 64 at a time: 96 ends in a half)."""
    generator = torch.Generator().manual_seed(8)
    values = torch.randint(-127, 128, (130, inner), generator=generator, dtype=torch.int8)
    scales = torch.rand(130, generator=generator) * 0.01
    for rows in (1, 3, 5, 8):
        x = torch.randn(rows, inner, generator=generator)
        x[0, :32] = 0.0  # an all-zero block: scale 0, no division by it
        quantized = _quantized_blocks(x)
        exact = (quantized @ values.double().T) * scales.double()
        # the blocks' sums are exact int32; their scaled float32 sum loses at most the usual bound
        bound = _sum_bound(quantized, values.double()) * scales.double() * 1.01 + 1e-30
        out32 = products.int8(x, values, scales)
        assert out32 is not None and out32.dtype == torch.float32
        assert ((out32.double() - exact).abs() <= bound).all(), (out32.double() - exact).abs().max()
        bf16 = x.to(torch.bfloat16)
        exact16 = (_quantized_blocks(bf16) @ values.double().T) * scales.double()
        out = products.int8(bf16, values, scales)
        assert out is not None and out.dtype == torch.bfloat16
        assert ((out.double() - exact16).abs() <= _bf16_ulp(exact16) / 2 + bound).all()
    # what quantizing the activations costs against the weight-only product: under 1 % of the sum's scale
    x = torch.randn(1, inner, generator=generator)
    weight_only = (x.double() @ values.double().T) * scales.double()
    out = products.int8(x, values, scales)
    assert out is not None
    magnitude = (x.double().abs() @ values.double().abs().T) * scales.double()
    assert ((out.double() - weight_only).abs() <= 0.01 * magnitude).all()


def test_a_rows_result_does_not_depend_on_the_rows_beside_it(products: kernels.Products) -> None:
    """Bitwise: the engine's rows are each a sequence's, and a sequence's tokens must not change with the others
    decoding beside it (as long as the kernels compute the step: at most MAX_ROWS rows)."""
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(200, 576, generator=generator).to(torch.bfloat16)
    x = torch.randn(kernels.MAX_ROWS, 576, generator=generator).to(torch.bfloat16)
    alone = [products.bf16(x[row:row + 1], w) for row in range(kernels.MAX_ROWS)]
    for rows in range(1, kernels.MAX_ROWS + 1):
        together = products.bf16(x[:rows], w)
        assert together is not None
        for row in range(rows):
            assert torch.equal(together[row:row + 1], alone[row])


def test_rms_norm_is_llamas_within_one_bf16_rounding(products: kernels.Products) -> None:
    from serving.model import _rms_norm

    generator = torch.Generator().manual_seed(5)
    x = (torch.randn(kernels.MAX_ROWS, 576, generator=generator) * 3).to(torch.bfloat16)
    weight = (torch.rand(576, generator=generator) + 0.5).to(torch.bfloat16)
    expected = _rms_norm(x, weight, 1e-5)
    ours = products.rms_norm(x, weight, 1e-5)
    assert ours is not None and ours.dtype == torch.bfloat16
    # two roundings to bf16 in each: where the float32 normalisation differs in its last bit, one bf16 step
    assert ((ours.float() - expected.float()).abs() <= 2 * _bf16_ulp(expected.float())).all()
    assert (ours == expected).float().mean() > 0.99


@pytest.mark.parametrize(("heads", "kv_heads", "first", "length"), [(9, 3, 0, 70), (4, 4, 0, 1), (8, 2, 40, 300)])
def test_decode_attention_is_sdpas_over_the_sequences_own_positions(products: kernels.Products, heads: int,
                                                                     kv_heads: int, first: int, length: int) -> None:
    """Grouped-query attention of one decode row over positions [first, length) of its cache (a sliding window
    starts past 0), read in place from a cache with room for more positions."""
    generator = torch.Generator().manual_seed(heads + length)
    cache = torch.randn(2, kv_heads, 512, 64, generator=generator).to(torch.bfloat16)
    q = torch.randn(heads, 64, generator=generator).to(torch.bfloat16)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.float()[None, :, None], cache[0, :, first:length].float()[None], cache[1, :, first:length].float()[None],
        scale=0.125, enable_gqa=True)[0, :, 0]
    ours = products.decode_attention(q, cache, first, length, 0.125)
    assert ours is not None and ours.shape == (1, heads, 64)
    assert ((ours[0].float() - expected).abs() <= _bf16_ulp(expected) + 1e-6).all()


def test_a_decode_rows_rope_cache_write_and_attention_are_the_engines(products: kernels.Products) -> None:
    """The fused call: keys rotated bitwise as serving.model._rope rotates them and stored at the row's position,
    values stored as they are, attention over the positions up to it."""
    from serving.model import _rope

    generator = torch.Generator().manual_seed(11)
    heads, kv_heads, dim, position = 9, 3, 64, 37
    cache = torch.randn(2, kv_heads, 128, dim, generator=generator).to(torch.bfloat16)
    before = cache.clone()
    qkv = torch.randn((heads + 2 * kv_heads) * dim, generator=generator).to(torch.bfloat16)
    angles = torch.rand(dim // 2, generator=generator).repeat(2) * position
    cos, sin = angles.cos().to(torch.bfloat16), angles.sin().to(torch.bfloat16)
    signed_sin = torch.cat((-sin[:dim // 2], sin[dim // 2:]))
    rotated = _rope(qkv[:(heads + kv_heads) * dim].view(1, heads + kv_heads, dim), cos, signed_sin, dim)[0]
    out = products.decode_rope_attention(qkv, heads, cos, signed_sin, cache, position, 5, 0.125)
    assert out is not None
    assert torch.equal(cache[0, :, position], rotated[heads:])
    assert torch.equal(cache[1, :, position], qkv[(heads + kv_heads) * dim:].view(kv_heads, dim))
    cache[:, :, position] = before[:, :, position]
    assert torch.equal(cache, before)  # nothing else written
    cache[0, :, position], cache[1, :, position] = rotated[heads:], qkv[(heads + kv_heads) * dim:].view(kv_heads, dim)
    expected = products.decode_attention(rotated[:heads], cache, 5, position + 1, 0.125)
    assert expected is not None and torch.equal(out, expected)


def test_the_mlps_activation_is_silu_gate_times_up(products: kernels.Products) -> None:
    gate_up = (torch.randn(3, 2 * 1536) * 4).to(torch.bfloat16)
    gate, up = gate_up.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    ours = products.silu_mul(gate_up)
    assert ours is not None
    assert ((ours.float() - expected.float()).abs() <= 2 * _bf16_ulp(expected.float())).all()
    assert (ours == expected).float().mean() > 0.99


def test_what_the_kernels_do_not_compute_is_left_to_the_library(products: kernels.Products) -> None:
    w = torch.randn(16, 64).to(torch.bfloat16)
    assert products.bf16(torch.randn(kernels.MAX_ROWS + 1, 64).to(torch.bfloat16), w) is None  # too many rows
    assert products.bf16(torch.randn(1, 48).to(torch.bfloat16), torch.randn(16, 48).to(torch.bfloat16)) is None
    assert products.bf16(torch.randn(1, 64).half(), w) is None  # float16 activations
    assert products.bf16(torch.randn(1, 64).to(torch.bfloat16), w.float()) is None  # float32 weights
    assert products.bf16(torch.randn(1, 64).to(torch.bfloat16), w.T.contiguous().T) is None  # not row-major


def _python(code: str, env: dict[str, str] | None = None) -> str:
    """Run `code` in a fresh interpreter, without the suite's OpenMP settings (OMP_NUM_THREADS=1 under xdist):
    what it checks is the runtime's own behaviour."""
    clean = {k: v for k, v in (env or os.environ).items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300, check=False, env=clean, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_kernels_use_torchs_openmp_with_the_calling_threads_count(products: kernels.Products,
                                                                      tmp_path: Path) -> None:
    """One OpenMP runtime in the process (torch's): the thread budgets the engine sets (contracts.machine) bound
    the kernels too. A thread whose torch count is 1 computes alone, with 2 it starts one helper thread."""
    out = _python(f"""
        import os, threading, torch
        from serving import kernels
        from serving.threads import set_torch_threads
        set_torch_threads(1)
        products = kernels.load(__import__("pathlib").Path({str(tmp_path)!r}))
        runtimes = {{line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}}
        w, x = torch.randn(4096, 576).to(torch.bfloat16), torch.randn(1, 576).to(torch.bfloat16)
        def tasks(): return set(os.listdir("/proc/self/task"))
        counts = []
        def run(threads):
            set_torch_threads(threads)
            # threads started by the call, counted by id: the previous Python thread, joined, may still be
            # leaving /proc/self/task meanwhile (join returns before the OS thread is gone)
            before = tasks(); products.bf16(x, w); counts.append(len(tasks() - before))
        for threads in (1, 2):
            worker = threading.Thread(target=run, args=(threads,)); worker.start(); worker.join()
        print(len(runtimes), counts)
    """)
    assert out.split() == ["1", "[0,", "1]"], out


def test_without_a_c_compiler_the_prebuilt_kernels_for_this_cpu_are_loaded_or_none(tmp_path: Path) -> None:
    """A machine without a compiler (the container image's runtime) loads the most capable prebuilt library its
    CPU runs (`python -m serving.kernels` in the image's builder stage), or none: the library's products."""
    if not (X86 and COMPILER):
        pytest.skip("prebuilding needs x86-64 and a C compiler")
    prebuilt = tmp_path / "prebuilt"
    subprocess.run([sys.executable, "-m", "serving.kernels", str(prebuilt)], check=True, timeout=300,
                   cwd=Path(__file__).parents[2], capture_output=True)
    assert sorted(p.name for p in prebuilt.iterdir()) == sorted(f"products-{n}.so" for n in kernels.PREBUILT)
    flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split())
    expected = next((name for name, (needed, _) in kernels.PREBUILT.items() if set(needed) <= flags), None)
    script = """
        import logging, sys, torch
        from pathlib import Path
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from serving import kernels
        loaded = kernels.load(Path(sys.argv[1]), Path(sys.argv[2]))
        print("loaded", loaded and loaded.isa)
        if loaded:
            w, x = torch.randn(64, 576).to(torch.bfloat16), torch.randn(2, 576).to(torch.bfloat16)
            print("agrees", torch.allclose(loaded.bf16(x, w).float(), x.float() @ w.float().T, rtol=0.02, atol=0.1))
    """
    no_compiler = {**os.environ, "PATH": str(tmp_path)}  # no cc, no gcc
    for folder, isa in ((prebuilt, expected), (tmp_path / "none", None)):
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(tmp_path / "cache"), str(folder)],
                                capture_output=True, text=True, timeout=300, env=no_compiler,
                                cwd=Path(__file__).parents[2], check=True)
        assert f"loaded {isa}" in result.stdout, result.stdout + result.stderr
        assert isa is None or "agrees True" in result.stdout
    assert not list((tmp_path / "cache").glob("kernels/*.so"))  # nothing compiled


def test_every_prebuilt_level_this_cpu_runs_computes_the_same_results(products: kernels.Products,
                                                                     tmp_path: Path) -> None:
    """The AVX2 and AVX-512 code paths (what a CPU without AVX-512 BF16 runs) agree with this CPU's own build."""
    prebuilt = tmp_path / "prebuilt"
    subprocess.run([sys.executable, "-m", "serving.kernels", str(prebuilt)], check=True, timeout=300,
                   cwd=Path(__file__).parents[2], capture_output=True)
    flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split())
    generator = torch.Generator().manual_seed(2)
    w = torch.randn(96, 576, generator=generator).to(torch.bfloat16)
    x = torch.randn(3, 576, generator=generator).to(torch.bfloat16)
    values = torch.randint(-127, 128, (96, 576), generator=generator, dtype=torch.int8)
    scales = torch.rand(96, generator=generator) * 0.01
    cache = torch.randn(2, 3, 64, 64, generator=generator).to(torch.bfloat16)
    q = torch.randn(9, 64, generator=generator).to(torch.bfloat16)
    exact = x.double() @ w.double().T
    ran = []
    for name, (needed, _) in kernels.PREBUILT.items():
        if not set(needed) <= flags:
            continue
        level = kernels.open_library(prebuilt / f"products-{name}.so")
        assert level is not None and level.isa == name
        out = level.bf16(x, w)
        assert out is not None
        assert ((out.double() - exact).abs() <= _bf16_ulp(exact) / 2 + _sum_bound(x, w) * 1.01).all()
        for method, args in (("int8", (x, values, scales)), ("rms_norm", (x, w[0], 1e-5)),
                             ("decode_attention", (q, cache, 0, 40, 0.125)), ("silu_mul", (x,))):
            ours, reference = getattr(level, method)(*args), getattr(products, method)(*args)
            assert ours is not None and reference is not None
            assert torch.allclose(ours.float(), reference.float(), rtol=0.01, atol=0.01), (name, method)
        ran.append(name)
    assert ran, "this x86-64 CPU runs none of the prebuilt levels"
    print("levels checked:", ran)


def test_the_library_is_built_once_per_machine(products: kernels.Products, model_cache_dir: Path) -> None:
    assert products.path.parent == model_cache_dir / "kernels" and products.path.is_file()
    built_at = products.path.stat().st_mtime_ns
    out = _python(f"""
        from serving import kernels
        print(kernels.load(__import__("pathlib").Path({str(model_cache_dir)!r})).path)
    """)
    assert out.strip() == str(products.path) and products.path.stat().st_mtime_ns == built_at


@pytest.fixture(scope="module")
def real_model(model_cache_dir: Path) -> Any:
    loader = BaseModelLoader(BaseModelRegistry({PACKAGED_BASE_MODEL: PACKAGED_BASE_MODEL_SOURCE}), model_cache_dir)
    return loader.load_model(PACKAGED_BASE_MODEL, dtype=torch.bfloat16).eval()


def _teacher_forced_logits(forward: LlamaForward, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        rows = [forward.forward(build_step(forward, [], [(0, prompt)]))[0]]
        for step, token in enumerate(tokens[:-1]):
            rows.append(forward.forward(build_step(forward, [(0, token, len(prompt) + step)], []))[0])
    return torch.stack(rows)


@pytest.mark.parametrize("weights", ["model", "int8"])
def test_the_engine_decodes_the_real_model_with_the_kernels_as_without(products: kernels.Products, real_model: Any,
                                                                       weights: WeightFormat) -> None:
    """Teacher-forced on the same tokens, the kernels' logits are the library's up to bfloat16 rounding (measured
    on SmolLM2 against float32: top-1 98.4 % either way in bf16, 93.0 % either way with int8 weights;
    docs/serving.md "Decode kernels"), and their products are the ones the engine uses for one stream."""
    prompt = [1, 504, 3458, 314, 260, 2443, 282, 4649, 30, 198] * 3
    library = LlamaForward(real_model, max_slots=1, max_context=128, tile_rows=1, weights=weights)
    fast = LlamaForward(real_model, max_slots=1, max_context=128, tile_rows=1, weights=weights,
                        kernels=products)
    with torch.inference_mode():
        tokens, logits = [], library.forward(build_step(library, [], [(0, prompt)]))[0]
        for step in range(32):
            tokens.append(int(logits.argmax()))
            logits = library.forward(build_step(library, [(0, tokens[-1], len(prompt) + step)], []))[0]
    expected = _teacher_forced_logits(LlamaForward(real_model, max_slots=1, max_context=128, tile_rows=1,
                                                   weights=weights), prompt, tokens)
    ours = _teacher_forced_logits(fast, prompt, tokens)
    agreement = (ours.argmax(-1) == expected.argmax(-1)).float().mean().item()
    error = (ours - expected).abs()
    print(f"{weights}: top-1 agreement {agreement:.3f}, logit error mean {error.mean():.3f} max {error.max():.2f}")
    assert agreement >= 0.9 and error.mean() < 0.1 * expected.std()
    counting = _Counting(products.library, products.isa, products.path)
    fast.kernels = counting
    with torch.inference_mode():
        fast.forward(build_step(fast, [(0, tokens[0], len(prompt) + 40)], []))
    # every product of a decode step (the output layer's too), every norm (the final one too), every attention
    # with its RoPE and cache write, every MLP activation
    layers = len(fast.layers)
    assert counting.computed == {"products": 4 * layers + 1, "norms": 2 * layers + 1, "attention": layers,
                                 "activations": layers}


class _Counting(kernels.Products):
    """The kernels, counting the products they computed."""

    computed: dict[str, int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        object.__setattr__(self, "computed", {"products": 0, "norms": 0, "attention": 0, "activations": 0})

    def _count(self, kind: str, out: torch.Tensor | None) -> torch.Tensor | None:
        self.computed[kind] += out is not None
        return out

    def bf16(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        return self._count("products", super().bf16(x, weight))

    def int8(self, x: torch.Tensor, values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor | None:
        return self._count("products", super().int8(x, values, scales))

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
        return self._count("norms", super().rms_norm(x, weight, eps))

    def decode_rope_attention(self, qkv: torch.Tensor, heads: int, cos: torch.Tensor, signed_sin: torch.Tensor,
                              layer_cache: torch.Tensor, position: int, first: int, scale: float
                              ) -> torch.Tensor | None:
        return self._count("attention", super().decode_rope_attention(qkv, heads, cos, signed_sin, layer_cache,
                                                                      position, first, scale))

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor | None:
        return self._count("activations", super().silu_mul(gate_up))


def test_the_service_decodes_on_the_kernels_where_the_measurement_took_them(start_serving: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's engine gets the kernels where the decode measurement found them faster (simulated here, as
    the measurement on the demo model's tiny shapes may go either way), not with FTAAS_SERVING_KERNELS=off, not
    batch-invariant, and not where the measurement found the library's products faster."""
    from serving.fast_paths import DecodeChoice
    from serving.service import InferenceService

    if not (X86 and COMPILER):
        pytest.skip("the kernels are built on x86-64 with a C compiler")
    chosen = {"choice": DecodeChoice("bfloat16", kernels=True)}
    monkeypatch.setattr(InferenceService, "_measured_choice", lambda self, base_model: chosen["choice"])

    taken = served_forward(start_serving)
    assert taken.kernels is not None and taken.dtype == torch.bfloat16
    assert served_forward(start_serving, serving_kernels="off").kernels is None
    assert served_forward(start_serving, serving_batch_invariant=True).kernels is None
    chosen["choice"] = DecodeChoice("bfloat16", kernels=False)
    assert served_forward(start_serving).kernels is None
