# syntax=docker/dockerfile:1
# GPU training image: `sent train` with a CUDA build of torch. Used by Vertex AI custom jobs
# (`sent submit-vertex`) and by `docker run --gpus all` on a workstation. See docs/containers.md.
#
# Build from the repository root:  docker build -f containers/train.Dockerfile -t sent-train .
#
# torch comes from PyPI: its Linux x86_64 wheel is the CUDA build and brings the CUDA runtime as
# pip packages, so the base image needs no CUDA toolkit; the host (or Vertex AI) provides the driver.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Keep in step with the torch pin in requirements/lock.txt (tests/test_infra.py checks it).
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer: a code change does not reinstall torch. The project's
# dependencies (plus the gcs extra, for gs:// paths) are read from pyproject.toml and pinned by the
# lock; torch is pinned here instead, so a CPU-only lock line cannot select the wrong build.
COPY pyproject.toml ./
COPY requirements/lock.txt requirements/lock.txt
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gcs']))" > /tmp/requirements.txt \
    && grep -v -E '^torch([^a-zA-Z0-9_.-]|$)' requirements/lock.txt > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt "torch==${TORCH_VERSION}" -r /tmp/requirements.txt

# The package itself. sentiment_cli/resources links to params.yaml and profiles/, so both come too.
COPY README.md params.yaml ./
COPY profiles/ profiles/
COPY sentiment_cli/ sentiment_cli/
RUN pip install --no-cache-dir --no-deps .


FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sent-train" \
      org.opencontainers.image.description="sent train on a CUDA GPU (Vertex AI custom jobs)"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --gid 10001 sent \
    && useradd --create-home --no-log-init --uid 10001 --gid 10001 sent
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/sent
# The working directory is a small sent project: params.yaml and profiles/ as in the repository,
# so `--profile` and `--set` behave as they do on a workstation. Outputs land here unless the
# paths.* keys point elsewhere (gs:// on Vertex AI).
COPY --chown=10001:10001 params.yaml ./
COPY --chown=10001:10001 profiles/ profiles/
USER 10001:10001

# Vertex AI passes the job's args in place of CMD, e.g. ["--profile", "vertex", "--set", "..."].
ENTRYPOINT ["sent", "train"]
CMD ["--profile", "gpu"]
