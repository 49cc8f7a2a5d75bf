# syntax=docker/dockerfile:1
# GPU training image: `sent train` with a CUDA build of torch. Used by Vertex AI custom jobs
# (`sent submit-vertex`) and by `docker run --gpus all` on a workstation. See docs/containers.md.
#
# Build from the repository root:  docker build -f containers/train.Dockerfile -t sent-train .
# Another CUDA build of torch:     ... --build-arg TORCH_CUDA=cu126   (then vertex.image_cuda=cu126)
#
# torch comes from the PyTorch index for TORCH_CUDA; its wheel brings the CUDA runtime as pip
# packages, so the base image needs no CUDA toolkit; the host (or Vertex AI) provides the driver.
# cu130 (torch 2.13's default) runs on compute capability 7.5 and newer (T4, L4, A100, H100, ...),
# driver 580+; cu126 also runs on V100 and P100. The image says which it holds in a label.

FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d AS builder
# Keep in step with the torch pin in requirements/lock.txt (tests/test_infra.py checks it).
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu130
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer: a code change does not reinstall torch.
# - torch pinned here (a CPU-only lock line must not win): cu130 is PyPI's default wheel, any other
#   build comes from the PyTorch index of that CUDA version;
# - what training needs, read from pyproject.toml and pinned by the lock: the dependencies minus
#   the serving-only ones (SERVE_ONLY: `sent serve` runs from the serving image; tests check that
#   nothing training or evaluation imports is among them), plus the gcs extra (gs:// paths, and
#   google-auth, with which a job reads its secrets from Secret Manager).
COPY pyproject.toml ./
COPY requirements/lock.txt requirements/lock.txt
ARG SERVE_ONLY="litestar uvicorn msgspec prometheus-client"
RUN torch_index="https://download.pytorch.org/whl/${TORCH_CUDA}" \
    && if [ "${TORCH_CUDA}" = "cu130" ]; then torch_index="https://pypi.org/simple"; fi \
    && pip install --no-cache-dir --index-url "${torch_index}" "torch==${TORCH_VERSION}" \
    && python -c "import re, sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; skip = set(sys.argv[1:]); print('\n'.join(d for d in p['dependencies'] + p['optional-dependencies']['gcs'] if re.split(r'[<>=!~\[; ]', d, maxsplit=1)[0] not in skip))" ${SERVE_ONLY} > /tmp/requirements.txt \
    && grep -v -E '^torch([^a-zA-Z0-9_.-]|$)' requirements/lock.txt > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/requirements.txt

# The package itself. sentiment_cli/resources links to params.yaml and profiles/, so both come too.
COPY README.md params.yaml ./
COPY profiles/ profiles/
COPY sentiment_cli/ sentiment_cli/
RUN pip install --no-cache-dir --no-deps .


FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ARG TORCH_CUDA=cu130
LABEL org.opencontainers.image.title="sent-train" \
      org.opencontainers.image.description="sent train on CUDA GPUs (Vertex AI custom jobs)" \
      io.sent.torch-cuda="${TORCH_CUDA}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --gid 10001 sent \
    && useradd --create-home --no-log-init --uid 10001 --gid 10001 sent
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/sent
# The working directory is a small sent project: params.yaml and profiles/ as in the repository,
# so `--profile` and `--set` behave as they do on a workstation. Outputs land here unless the
# paths.* keys point elsewhere: on Vertex AI, AIP_MODEL_DIR and AIP_CHECKPOINT_DIR (under /gcs/).
COPY --chown=10001:10001 params.yaml ./
COPY --chown=10001:10001 profiles/ profiles/
USER 10001:10001

# `--launch auto` starts one process per visible GPU, and a multi-node launch across the job's
# replicas (CLUSTER_SPEC); with one GPU it trains in this process. `sent` is PID 1 and receives
# SIGTERM itself: it passes it on, every process checkpoints at its next step and exits.
# Vertex AI jobs set their own command and args (`sent submit-vertex`): these are the defaults.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sent", "train", "--launch", "auto"]
CMD ["--profile", "gpu"]
