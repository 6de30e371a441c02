# syntax=docker/dockerfile:1
#
# Sightline: one image for every role (api, worker, beat, migrate), chosen by the command:
#   docker run IMAGE                                  -> sightline serve (API on :8000)
#   docker run IMAGE sightline worker --concurrency=1 -> Celery worker, queue "analysis"
#   docker run IMAGE sightline beat                   -> Celery beat (the reconciler; run exactly one)
#   docker run IMAGE sightline migrate                -> alembic upgrade head, then exit
# Configuration is environment only (SIGHTLINE_*; see .env.example).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# builder: install the locked dependencies (requirements.lock, every file hash-checked), then a
# wheel of the project without dependencies, into /opt/venv. Every dependency ships manylinux
# wheels for CPython 3.11, so no compiler is needed. `python3 -m venv` works on the official
# python image and on a Debian base (python3 + python3-venv) alike.
# A registry reached through a TLS proxy: pass its CA bundle as a build secret, used by pip only
# and never stored in a layer:  --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY requirements.lock ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && pip install --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations

RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && pip wheel --no-deps --wheel-dir /wheels . \
 && pip install --no-deps /wheels/sightline-*.whl \
 && pip check

# ---------------------------------------------------------------------------------------------
# runtime: the venv only, no build tools, no sources, non-root.
# onnxruntime and opencv-python-headless need only libstdc++6, libgcc-s1 and zlib1g at run
# time (checked with ldd), all present in the slim base and in a Debian minbase, so no apt
# packages are installed.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="sightline" \
      org.opencontainers.image.description="DICOM-aware radiology worklist with ONNX Grad-CAM (research use only, not a medical device)"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIGHTLINE_HOST=0.0.0.0 \
    SIGHTLINE_PORT=8000 \
    SIGHTLINE_MODEL_CACHE_DIR=/opt/sightline/model-cache \
    SIGHTLINE_STORAGE_DIR=/var/lib/sightline/blobs

# Metadata that does not depend on the venv comes first: with a copy-on-write-less storage driver
# (podman's vfs) every instruction after the venv copies the whole image once more.
EXPOSE 8000

# Liveness of the API only; compose disables it for worker, beat and migrate containers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SIGHTLINE_PORT', '8000'), timeout=4)"]

CMD ["sightline", "serve"]

WORKDIR /app

RUN groupadd --system --gid 10001 sightline \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin sightline \
 && mkdir -p /app /opt/sightline/model-cache /var/lib/sightline/blobs

COPY --from=builder /opt/venv /opt/venv

# Build the CAM-ready model once, into the image, so that workers start without doing it.
# The cache stays owned by root and read-only to the service user (works with a read-only
# root filesystem); /app (embedded SQLite defaults write ./var) and the blob volume belong
# to the service user.
RUN sightline models prepare \
 && chmod -R a+rX /opt/sightline/model-cache \
 && chown -R 10001:10001 /app /var/lib/sightline/blobs

VOLUME ["/var/lib/sightline/blobs"]

USER 10001:10001
