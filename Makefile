# The two commands: `make run` starts a hub on 127.0.0.1:8000; `make test` runs the whole test suite.
# Both bootstrap a virtual environment from the pinned constraints, so a fresh machine needs only
# Python >= 3.11 and make.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := hub,client,dev

.PHONY: run test lint fmt bench lock clean browser

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "syncd needs Python >= 3.11 (found " + sys.version.split()[0] + ")")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24" "setuptools>=69" wheel
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/syncd serve

test: $(STAMP) lint browser
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest --cov --cov-report=
	$(BIN)/python scripts/coverage_gate.py

# The dashboard test drives Debian's chromium through Playwright (which never downloads a browser here), with
# a CJK font so the page's Chinese labels render. Installed once, when absent (needs root or sudo).
browser:
	@command -v chromium >/dev/null && fc-list 2>/dev/null | grep -qi "wenquanyi micro hei" || { \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends chromium fonts-wqy-microhei; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m benchmarks all --quick --json

# Re-pin every dependency (run after changing pyproject.toml's dependencies, then commit constraints.txt).
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet --upgrade -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip freeze --exclude-editable --all | grep -vE '^(pip|setuptools|wheel)==' > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage
