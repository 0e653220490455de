# Two commands on a fresh machine: `make repro` (set up and run the pipeline), `make test`.
PYTHON ?= python3
VENV := .venv
# Stage commands in dvc.yaml call `python`: make it the project's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# The page template `dvc plots show` uses (.dvc/config: plots.html_template), with vega inline so the
# page renders offline; generated from the pinned vl-convert-python, git-ignored, never committed.
PLOTS_TEMPLATE := .dvc/plots-offline.html

.PHONY: setup repro test lint bench plots sweep-report clean

setup: $(VENV)/.installed $(PLOTS_TEMPLATE)

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r requirements.txt
	touch $@

$(PLOTS_TEMPLATE): $(VENV)/.installed stages/plots_template.py
	python -m stages.plots_template

repro: setup
	dvc repro

test: setup
	python -m pytest

lint: setup
	ruff check stages tests bench

bench: setup
	python -m bench.train_speed

plots: setup
	dvc plots show

sweep-report: setup
	python -m stages.sweep_report

clean:
	rm -rf $(VENV) dvc_plots .pytest_cache $(PLOTS_TEMPLATE)
