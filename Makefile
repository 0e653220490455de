# Two commands on a fresh machine: `make repro` (set up and run the pipeline), `make test`.
PYTHON ?= python3
VENV := .venv
# Stage commands in dvc.yaml call `python`: make it the project's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test lint bench plots sweep sweep-report study study-report clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r requirements.txt
	touch $@

repro: setup
	dvc repro

test: setup
	python -m pytest

lint: setup
	ruff check stages lenet_mixup tools tests bench

bench: setup
	python -m bench.train_speed

plots: setup
	dvc plots show

# make sweep ARGS="-S 'mixup.alpha=0.2,0.4,1.0' -S 'train.seed=0,1,2' [--workers N] [--address ADDR]"
sweep: setup
	python -m tools.sweep $(ARGS)

sweep-report: setup
	python -m tools.sweep_report

study: setup
	python -m tools.study run

study-report: setup
	python -m tools.study report

clean:
	rm -rf $(VENV) dvc_plots .pytest_cache
