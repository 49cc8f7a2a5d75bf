# syntax=docker/dockerfile:1
# CPU drift image: `sent drift` as a Cloud Run job (or `sent drift --serve` as a service).
# See docs/containers.md and containers/cloudrun/.
#
# Build from the repository root:  docker build -f containers/drift.Dockerfile -t sent-drift .
#
# Drift runs the model over the window (predictions, embeddings), so it needs torch, but never
# a GPU: the CPU build of torch, as in the serving image, and not what only training imports
# (TRAIN_ONLY: tests/test_infra.py checks that nothing `sent drift` imports is among them;
# matplotlib, which only training plots with, still comes in as a dependency of mlflow).
# No model inside: serve.model (default models:/sentiment-classifier@champion) comes from the
# MLflow registry at MLFLOW_TRACKING_URI, the reference from paths.metrics_dir.

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS builder
# Keep in step with the torch pin in requirements/lock.txt (tests/test_infra.py checks it).
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer: torch==X+cpu from the PyTorch CPU index, the rest from
# PyPI pinned by the lock, less TRAIN_ONLY, plus the gcs extra (the gs:// prediction log).
COPY pyproject.toml ./
COPY requirements/lock.txt requirements/lock.txt
ARG TRAIN_ONLY="accelerate"
RUN python -c "import re, sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; skip = set(sys.argv[1:]); print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['gcs'] if re.split(r'[<>=!~\[; ]', d, maxsplit=1)[0] not in skip))" ${TRAIN_ONLY} > /tmp/requirements.txt \
    && grep -v -E '^torch([^a-zA-Z0-9_.-]|$)' requirements/lock.txt > /tmp/constraints.txt \
    && pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
       -c /tmp/constraints.txt "torch==${TORCH_VERSION}+cpu" -r /tmp/requirements.txt

# The package itself. sentiment_cli/resources links to params.yaml and profiles/, so both come too.
COPY README.md params.yaml ./
COPY profiles/ profiles/
COPY sentiment_cli/ sentiment_cli/
RUN pip install --no-cache-dir --no-deps .


FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
LABEL org.opencontainers.image.title="sent-drift" \
      org.opencontainers.image.description="sent drift on the CPU (Cloud Run jobs)"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --gid 10001 sent \
    && useradd --create-home --no-log-init --uid 10001 --gid 10001 sent
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/sent
# A small sent project as the working directory: params.yaml and profiles/ as in the repository.
COPY --chown=10001:10001 params.yaml ./
COPY --chown=10001:10001 profiles/ profiles/
USER 10001:10001

# Exit status with --fail-on-drift: 0 no drift, 4 drift, 5 not enough data, 1 error: a Cloud Run
# job execution fails on anything but 0, and that failure is what an alert watches.
# Arguments after the image name replace CMD: docker run IMAGE --current gs://B/predictions --fail-on-drift
ENTRYPOINT ["sent", "drift"]
CMD ["--fail-on-drift"]
