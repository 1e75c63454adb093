# The two commands: `make lab` (open the course) and `make test` (run every check).
# Both create .venv with python3 and install the package; the install is skipped
# while pyproject.toml is unchanged (the stamp file's name holds its hash).

PYTHON ?= python3
PORT ?= 8888
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell (sha256sum pyproject.toml 2>/dev/null || shasum -a 256 pyproject.toml) | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: lab test setup unit notebooks exercises bench book doctor clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@# contributors: refuse commits of notebooks that carry outputs (.githooks/pre-commit)
	@if [ -d .git ] && [ -z "$$(git config --get core.hooksPath)" ]; then git config core.hooksPath .githooks; fi
	@rm -f $(VENV)/.installed-*
	@touch $@

lab: $(STAMP)
	$(VENV)/bin/clcourse lab --port $(PORT)

test: $(STAMP)
	sh tests/install_browser.sh
	CLCOURSE_PROFILE=quick $(PY) -m pytest tests notebooks --nbval-lax --nbval-cell-timeout=900 -p no:cacheprovider $(PYTEST_ARGS)

unit: $(STAMP)
	CLCOURSE_PROFILE=quick $(PY) -m pytest tests -p no:cacheprovider $(PYTEST_ARGS)

notebooks: $(STAMP)
	CLCOURSE_PROFILE=quick $(PY) -m pytest notebooks --nbval-lax --nbval-cell-timeout=900 -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

book: $(STAMP)
	@$(PY) -c "import jupyter_book" 2>/dev/null || $(PY) -m pip install --quiet -e '.[book]'
	$(PY) -m book.build --out build/book $(if $(EXECUTED),--executed '$(EXECUTED)') $(BOOK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
