# Two commands for a fresh machine: `make shell` and `make test`.
# Each creates .venv and installs exactly what uv.lock records, with its hashes, on first use
# (or when pyproject.toml or uv.lock changes). `make lock` upgrades the lock file on purpose.
PYTHON ?= python3
# pytest-xdist workers: the suite waits on loopback servers much of the time, so two or more
# workers help even on two cores (`make test PYTEST_WORKERS=0` runs it in one process).
PYTEST_WORKERS ?= auto
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP := $(VENV)/.installed

.PHONY: shell test lint format lock clean

# uv itself comes from the package registry at the version and hashes uv.lock records for it,
# so the tool that installs everything else is the one CI used.
define UV_FROM_LOCK
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Python 3.11+ is needed; {sys.executable} is {sys.version.split()[0]} (set PYTHON=...)")
import tomllib
with open("uv.lock", "rb") as lock:
    [uv] = [p for p in tomllib.load(lock)["package"] if p["name"] == "uv"]
files = uv.get("wheels", []) + ([uv["sdist"]] if "sdist" in uv else [])
print(f"uv=={uv['version']}", *(f"--hash={f['hash']}" for f in files))
endef
export UV_FROM_LOCK

$(UV): uv.lock
	$(PYTHON) -c "$$UV_FROM_LOCK" > $(VENV).uv-requirement.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
		-r $(VENV).uv-requirement.txt
	rm -f $(VENV).uv-requirement.txt
	touch $@

# --locked: install from uv.lock and fail, naming `make lock`, if pyproject.toml no longer matches it.
$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --extra dev
	touch $@

shell: $(STAMP)
	$(BIN)/billing-bot shell

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n $(PYTEST_WORKERS)

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# A deliberate upgrade: every dependency to the newest release pyproject.toml allows.
lock: $(UV)
	$(UV) lock --upgrade
	$(UV) sync --locked --extra dev
	touch $(STAMP)

clean:
	rm -rf $(VENV)
