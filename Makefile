# Set-up and entry points. Each target creates the virtualenv (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed first, alone: on the build machines this is a CPU wheel already on disk; elsewhere
# pip takes the normal PyPI wheel. The project's torch range then installs nothing more.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-dev-notebooks

.PHONY: install demo test test-fast notebooks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks]"
	touch $(STAMP)

install: $(STAMP)

# The main job: train the default config (needle task, T = 512, rho = 0.3) and print the summary.
demo: $(STAMP)
	$(BIN)/retention train

# The whole test suite (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest

# Everything but the end-to-end runs marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# Execute every notebook (notebooks/*.py) against the demo store (built on first use under
# build/notebooks/demo-store, reused after): build/notebooks/<name>.ipynb and <name>.html.
notebooks: $(STAMP)
	$(BIN)/python -m notebooks.execute --out build/notebooks

clean:
	rm -rf $(VENV) mlflow.db mlartifacts mlruns checkpoints build
