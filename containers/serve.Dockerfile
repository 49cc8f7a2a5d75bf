# syntax=docker/dockerfile:1
# CPU serving image: `sent serve` for Cloud Run (or any container host). See docs/containers.md.
#
# Build from the repository root:  docker build -f containers/serve.Dockerfile -t sent-serve .
#
# No model inside: the container loads serve.model (default models:/sentiment-classifier@champion)
# from the MLflow registry at MLFLOW_TRACKING_URI, or a folder given with --set serve.model=...

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS builder
# Keep in step with the torch pin in requirements/lock.txt (tests/test_infra.py checks it).
ARG TORCH_VERSION=2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer. torch==X+cpu exists only on the PyTorch CPU index:
# the CPU build, about a tenth of the CUDA one. Everything else comes from PyPI, pinned by the lock.
COPY pyproject.toml ./
COPY requirements/lock.txt requirements/lock.txt
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gcs']))" > /tmp/requirements.txt \
    && grep -v -E '^torch([^a-zA-Z0-9_.-]|$)' requirements/lock.txt > /tmp/constraints.txt \
    && pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
       -c /tmp/constraints.txt "torch==${TORCH_VERSION}+cpu" -r /tmp/requirements.txt

# The package itself. sentiment_cli/resources links to params.yaml and profiles/, so both come too.
COPY README.md params.yaml ./
COPY profiles/ profiles/
COPY sentiment_cli/ sentiment_cli/
RUN pip install --no-cache-dir --no-deps .


FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
LABEL org.opencontainers.image.title="sent-serve" \
      org.opencontainers.image.description="sent serve on the CPU (Cloud Run)"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080
RUN groupadd --gid 10001 sent \
    && useradd --create-home --no-log-init --uid 10001 --gid 10001 sent
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/sent
# A small sent project as the working directory: params.yaml and profiles/ as in the repository.
# The prediction log (paths.prediction_log) goes to ./logs unless set to a gs:// URL.
COPY --chown=10001:10001 params.yaml ./
COPY --chown=10001:10001 profiles/ profiles/
USER 10001:10001

EXPOSE 8080
# Cloud Run ignores HEALTHCHECK (it has its own probes); docker and compose use it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]

# A shell only to read $PORT (Cloud Run sets it); exec hands the process and its signals to sent.
# Arguments after the image name are appended: docker run IMAGE --quantize --set serve.threads=2
ENTRYPOINT ["/bin/sh", "-c", "exec sent serve --host 0.0.0.0 --port \"${PORT}\" \"$@\"", "sent-serve"]
CMD []
