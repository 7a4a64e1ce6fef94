# syntax=docker/dockerfile:1
# One image for every RadSentry process; the command picks the role (docs/deploy.md):
#   API        radsentry serve --no-consumer --no-jobs --no-migrate   (the default CMD)
#   consumer   radsentry consume --metrics-port 9101
#   scheduler  radsentry scheduler --metrics-port 9102
#   migration  radsentry migrate
#
# Build (CPU torch, the default):   docker build -t radsentry:0.1.0 .
# Build with CUDA torch:            docker build --build-arg TORCH_VARIANT=cu128 -t radsentry:0.1.0-cu128 .
#
# The base is pinned to an exact tag (the Python this project is tested with). Production
# builds pin it by digest as well, python:3.11.7-slim-bookworm@sha256:..., and bump both
# deliberately; this repository cannot resolve a digest (no container runtime or registry
# access where it is developed).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# cpu (default): torch from the PyTorch CPU index, no CUDA libraries (~1 GB smaller).
# A CUDA build tag of the same index (e.g. cu128) for a GPU scheduler: the wheel brings its
# CUDA runtime as pip packages, so the slim base still serves; the node provides the driver.
ARG TORCH_VARIANT=cpu
# Keep equal to the torch pin in pyproject.toml (tests/unit/test_dockerfile.py checks).
ARG TORCH_VERSION=2.13.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv \
    && pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY monitor ./monitor
COPY retrain ./retrain
COPY pccp ./pccp
COPY dashboards ./dashboards
# Everything else from PyPI; the torch pin is already met by the build installed above
# (2.13.0+cpu satisfies ==2.13.0), so no CUDA wheel is pulled in.
RUN pip install . \
    && python -c "import torch; print('torch', torch.__version__)"


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="radsentry" \
      org.opencontainers.image.description="Post-market monitoring and PCCP change control for medical-imaging AI" \
      org.opencontainers.image.licenses="Apache-2.0"

# uid/gid 10001: the chart runs every pod as this user (runAsNonRoot, read-only root
# filesystem). HOME is /tmp, which the chart mounts as an emptyDir (caches of matplotlib,
# torch, MLflow's temporary files).
RUN groupadd --system --gid 10001 radsentry \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin radsentry \
    && mkdir -p /var/lib/radsentry \
    && chown 10001:10001 /var/lib/radsentry

COPY --from=builder /opt/venv /opt/venv

# No secret is baked in: database URL, signing key and tokens come from the orchestrator.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    RADSENTRY_DATA_DIR=/var/lib/radsentry \
    RADSENTRY_API__HOST=0.0.0.0 \
    RADSENTRY_LOGGING__JSON_OUTPUT=true

WORKDIR /var/lib/radsentry
USER 10001:10001
EXPOSE 8000 9101 9102

# No HEALTHCHECK: the same image runs processes without an HTTP health endpoint (consumer,
# scheduler, migration); Kubernetes probes the API's /healthz and /readyz (helm/radsentry).
ENTRYPOINT ["radsentry"]
CMD ["serve", "--no-consumer", "--no-jobs", "--no-migrate"]
