# Two commands on a fresh machine: `make repro` (set up and run the pipeline), `make test`.
PYTHON ?= python3
VENV := .venv
# Stage commands in dvc.yaml call `python`: make it the project's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test test-fast lint bench plots sweep sweep-report study study-report clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r requirements.txt
	touch $@

repro: setup
	dvc repro

# The test files spread over the cores (pytest-xdist); a file's tests stay together, in order, so that its
# module-scoped fixtures (the sweeps of tests/pipeline/test_sweep.py) are made once.
test: setup
	python -m pytest -n auto --dist loadfile

# The unit tests alone (tests/unit/: in-process, no DVC run, no Ray), for a fast loop while changing code;
# ARGS go to pytest (make test-fast ARGS="-k cutmix").
test-fast: setup
	python -m pytest tests/unit -n auto --dist loadfile $(ARGS)

lint: setup
	ruff check stages lenet_mixup tools tests bench

bench: setup
	python -m bench.train_speed

plots: setup
	dvc plots show

# make sweep ARGS="-S 'mixup.alpha=0.2,0.4,1.0' -S 'train.seed=0,1,2' [--workers N] [--address ADDR] [--archive DIR]"
sweep: setup
	python -m tools.sweep $(ARGS)

# The statistics of the experiments of HEAD: reports/report.md and reports/report.png
sweep-report: setup
	python -m tools.report $(ARGS)

# The study (docs/study.md): four sweeps, each run archived (study/runs/, study/cutmix/runs/) and committed as it finishes.
study: setup
	python -m tools.sweep -S 'train.seed=range(0,5)' --archive study/runs
	python -m tools.sweep -S 'mixup.alpha=0.2,0.4,2.0' -S 'train.seed=range(0,3)' --archive study/runs
	python -m tools.sweep -S 'train.precision=bf16' -S 'train.seed=range(0,3)' --archive study/runs
	python -m tools.sweep -S 'variants=[baseline,mixup,cutmix]' -S 'train.seed=range(0,3)' --archive study/cutmix/runs

study-report: setup
	python -m tools.report $(STUDY_REPORT)
	python -m tools.report $(CUTMIX_REPORT)

# What the committed study runs lacked when they ran (train.precision: fp32 then; evaluate.batch_size: 1000, the
# evaluation's batch since), and the comparisons study/report.md shows (tests/unit/test_report.py runs the same).
STUDY_REPORT = --archive study/runs --absent train.precision=fp32 --absent evaluate.batch_size=1000 \
	--reference variant=baseline --reference mixup.alpha=1.0 --reference train.precision=fp32 --out study
# CutMix against mixup and the baseline: three variants in each run, on one machine (its own archive: its runs
# name the variants, and the data's copy, that the runs above do not).
CUTMIX_REPORT = --archive study/cutmix/runs --out study/cutmix

clean:
	rm -rf $(VENV) dvc_plots .pytest_cache
