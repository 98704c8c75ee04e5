# syntax=docker/dockerfile:1
# tbps image: CPU by default.
#   docker build -t tbps .
# Dependencies come from requirements.lock (every package pinned with hashes; `make lock`): the
# runtime lock, without the test extra (`make setup` installs requirements-test.lock, the same
# versions and the test tools). Its torch is PyPI's Linux wheel, which runs on the CPU and,
# on an NVIDIA runtime base, on the GPU:
#   docker build -t tbps:cuda --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 .
# One image runs every role: `tbps serve` (API), `tbps worker` (jobs), docker/prestart.sh.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with the pinned dependencies and tbps (editable, /app) ----
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    elif ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY requirements.lock build-constraints.txt ./
RUN PIP_CONSTRAINT=build-constraints.txt pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models
COPY indexer ./indexer
COPY migrations ./migrations
RUN pip install --no-deps -e .

# ---- runtime: the environment, the sources, a non-root user ----
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH TBPS_DATA_DIR=/data TBPS_HOST=0.0.0.0 TBPS_PORT=8000
RUN (command -v python3 >/dev/null || (apt-get update && apt-get install -y \
      --no-install-recommends python3)) \
 && apt-get update && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 tbps && mkdir -p /data && chown tbps /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --from=build /app /app
COPY docker ./docker
USER tbps
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "docker/healthcheck.py", "api"]
CMD ["tbps", "serve"]
