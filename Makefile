# The two commands of the README. Both create the virtual environment on first use.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Tests and the demo read MNIST from the copy beside the checkout unless told otherwise.
export CLASSCOMP_DATA_DIR ?= $(abspath ../shared/data)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: install serve test
install: $(VENV)/.installed

serve: $(VENV)/.installed
	$(VENV)/bin/classcomp serve

test: $(VENV)/.installed
	$(PYTHON) -m pytest -q
