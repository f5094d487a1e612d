#!/usr/bin/env bash
# The llama.cpp baseline of bench/serve_latency.py: llama-cpp-python built from its PyPI sdist for this CPU
# (about 10 minutes on 2 cores; no wheel for CPUs is published), and the sdist's own converter
# (vendor/llama.cpp/convert_hf_to_gguf.py, with its gguf-py) kept unpacked, which serve_latency.py uses to
# write bf16 and q8_0 GGUF files of the very weights ftaas serves. Not needed to run or test ftaas.
#
#     bash bench/llama_cpp_setup.sh        # then: python bench/serve_latency.py (finds both by itself)
#
# `bash bench/llama_cpp_setup.sh avx2` builds a second copy with AVX2 code only (no AVX-512, VNNI or AMX) into
# ~/.cache/ftaas-bench/llama-cpp-avx2, to compare with ftaas's AVX2 kernels on one machine:
#     PYTHONPATH=~/.cache/ftaas-bench/llama-cpp-avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
#         python bench/serve_latency.py --kernels-march x86-64-v3 ...
set -eu
VERSION=0.3.36
SOURCE="${FTAAS_BENCH_LLAMA_CPP:-$HOME/.cache/ftaas-bench/llama-cpp-python-$VERSION}"
mkdir -p "$(dirname "$SOURCE")"
if [ ! -f "$SOURCE/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  scratch=$(mktemp -d)
  python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$scratch"
  tar -xzf "$scratch/llama_cpp_python-$VERSION.tar.gz" -C "$scratch"
  rm -rf "$SOURCE" && mv "$scratch/llama_cpp_python-$VERSION" "$SOURCE" && rm -rf "$scratch"
fi
# The converter imports sentencepiece even for byte-level BPE vocabularies such as SmolLM2's.
python -m pip install -q sentencepiece
if [ "${1:-}" = "avx2" ]; then
  TARGET="$HOME/.cache/ftaas-bench/llama-cpp-avx2"
  if [ ! -d "$TARGET/llama_cpp" ]; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
      -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF \
      -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
      python -m pip install -v --no-deps --target "$TARGET" "$SOURCE" 2>&1 | tail -3
  fi
  PYTHONPATH="$TARGET" python -c "import llama_cpp; print('llama-cpp-python (AVX2 only)', llama_cpp.__version__)"
  exit 0
fi
if ! python -c "import llama_cpp" 2>/dev/null; then
  # GGML_NATIVE: the kernels for this CPU's own instruction set, as a user building it would get them.
  CMAKE_ARGS="-DGGML_NATIVE=ON" python -m pip install -v "$SOURCE" 2>&1 | tail -3
fi
python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
echo "converter: $SOURCE/vendor/llama.cpp/convert_hf_to_gguf.py"
