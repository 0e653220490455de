# Two commands on a fresh machine: `make repro` (set up and run the pipeline), `make test`.
PYTHON ?= python3
VENV := .venv
# Stage commands in dvc.yaml call `python`: make it the project's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements.txt
	touch $@

repro: setup
	dvc repro

test: setup
	python -m pytest

lint: setup
	ruff check stages tests bench

bench: setup
	python -m bench.train_speed

clean:
	rm -rf $(VENV) dvc_plots .pytest_cache
