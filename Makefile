# Everything the project needs is installed into .venv by the first target that needs it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lz4 browser demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) lz4

# lz4's header (Debian's liblz4-dev), which Verilator's FST writer needs for `--waves`
# (only that: without it the rest installs and `--waves` is refused by name).
lz4:
	@echo '#include <lz4.h>' | $${CXX:-c++} -E -x c++ - >/dev/null 2>&1 \
	  || (apt-get update -q && apt-get install -y -q liblz4-dev) \
	  || echo "lz4.h not installed (apt-get failed): accel run --waves will be refused"

# Headless Chromium (Debian's package) for the test that opens the sweep report.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)

demo: $(STAMP)
	$(BIN)/accel demo

# Two workers (the machine's two cores); a test file's tests stay on one worker, so each
# module's fixtures (a Verilator model, a compiled build) are made once.
test: $(STAMP) browser
	$(BIN)/pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf build .pytest_cache
