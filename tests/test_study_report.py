"""The study report on a tiny study of known numbers: means, SDs, paired t-intervals, verdicts, partial studies."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from lenet_mixup.stage import UserError
from tests.conftest import ROOT
from tools.study import run_name
from tools.study_report import report, t_quantile

EPSILONS = ("1/255", "2/255", "4/255", "8/255")
COMMIT = "c0ffee" * 6 + "abcd"
DEFAULTS = {"peak_acc": 0.70, "final_acc": 0.68, "final_loss": 1.5, "gap": 0.2, "ece_final": 0.1, "ece_best": 0.05,
            "fgsm_final": 0.3, "fgsm_best": 0.4, "train_seconds": 300.0, "examples_per_sec": 5000.0}


def write_run(runs, variant, seed, alpha=None, precision="fp32", **values):
    """One run folder in the format tools.study commits, its metrics DEFAULTS overridden by `values`."""
    v = {**DEFAULTS, **values}
    name = run_name(variant, seed, alpha, precision)
    folder = runs / name
    folder.mkdir(parents=True)
    info = {"name": name, "variant": variant, "seed": seed, "alpha": alpha, "precision": precision,
            "code_commit": COMMIT, "prepared_md5": "de7f3fc06e7c434cd0f1085a47ff01ec",
            "wall_seconds": 400.0, "finished": "2026-01-01T00:00:00+00:00", "torch": "2.14.1", "host": "test"}
    summary = {"peak_eval_acc": v["peak_acc"], "peak_epoch": 14, "final_eval_acc": v["final_acc"],
               "min_eval_loss": 0.9, "min_loss_epoch": 10, "final_eval_loss": v["final_loss"],
               "train_seconds": v["train_seconds"], "examples_per_sec": v["examples_per_sec"], "device": "cpu"}
    evaluation = {
        "final": {"accuracy": v["final_acc"], "nll": v["final_loss"], "ece": v["ece_final"],
                  "fgsm_acc": {e: v["fgsm_final"] for e in EPSILONS}, "epoch": 35,
                  "train_accuracy": v["final_acc"] + v["gap"], "generalization_gap": v["gap"]},
        "best": {"accuracy": 0.7, "nll": 0.9, "ece": v["ece_best"], "fgsm_acc": {e: v["fgsm_best"] for e in EPSILONS},
                 "epoch": 10}}
    (folder / "run.json").write_text(json.dumps(info))
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "evaluation.json").write_text(json.dumps(evaluation))
    (folder / "params.yaml").write_text(f"train:\n  epochs: 35\n  seed: {seed}\nmixup:\n  alpha: {alpha or 1.0}\n")
    (folder / "epochs.tsv").write_text("epoch\tstep\ttrain_loss\teval_loss\teval_acc\n1\t1000\t1.5\t1.2\t0.5\n")
    (folder / "fgsm.tsv").write_text("epsilon_255\taccuracy_final\taccuracy_best\n1\t0.3\t0.4\n")
    (folder / "reliability.tsv").write_text("bin_low\tbin_high\tcount\tconfidence\taccuracy\n0\t1\t10\t0.9\t0.8\n")
    return folder


@pytest.fixture
def study(tmp_path):
    """A partial study of known numbers (differences are mixup - baseline, paired by seed):
    peak acc      d = .03 .04 .05  mean .04, SD .01  -> 95% CI .04 -+ 4.302653 * .01 / sqrt(3) = [.0152, .0648]
    final acc     d = .02 .03 .01  mean .02, SD .01  -> [-.0048, .0448]: contains 0
    gap           d = .10 .11 .12  mean .11          -> [.0852, .1348]: mixup over-fits MORE
    final loss    d = -1 -1 -1     SD 0              -> [-1, -1]
    alpha 2.0 - alpha 1.0, final acc: d = .04 .03 .05 -> [.0152, .0648]; alpha 0.2: seed 0 alone; 0.4: none
    baseline bf16 - fp32, final acc: d = .001 .003 (seeds 0, 1) -> mean .002, SD .001414,
                  95% CI .002 -+ 12.7062 * .001414 / sqrt(2) = [-.0107, .0147]; fp32 SD .01;
                  ECE final: d = .2 .2 -> outside seed noise; every other metric: d = 0
    """
    runs = tmp_path / "runs"
    base_final, mix_final = (0.68, 0.69, 0.70), (0.70, 0.72, 0.71)
    for seed in range(3):
        write_run(runs, "baseline", seed, peak_acc=0.70 + 0.01 * seed, final_acc=base_final[seed],
                  final_loss=1.8 + 0.1 * seed, gap=0.2)
        write_run(runs, "mixup", seed, 1.0, peak_acc=(0.73, 0.75, 0.77)[seed], final_acc=mix_final[seed],
                  final_loss=0.8 + 0.1 * seed, gap=(0.30, 0.31, 0.32)[seed])
        write_run(runs, "mixup", seed, 2.0, final_acc=mix_final[seed] + (0.04, 0.03, 0.05)[seed])
    write_run(runs, "mixup", 0, 0.2, final_acc=0.66)
    for seed in range(2):
        write_run(runs, "baseline", seed, precision="bf16", final_acc=base_final[seed] + (0.001, 0.003)[seed],
                  peak_acc=0.70 + 0.01 * seed, final_loss=1.8 + 0.1 * seed, ece_final=0.3, train_seconds=600.0,
                  examples_per_sec=2500.0)
    return runs


def row(text, first_cell):
    """The cells of the Markdown table row that starts with `first_cell`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


def test_t_quantile_matches_the_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-5)
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-5)
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-5)
    assert t_quantile(0.975, 30) == pytest.approx(2.042272, abs=1e-5)


def test_means_intervals_and_verdicts(study, tmp_path):
    text = report(study, tmp_path / "out")
    assert (tmp_path / "out/report.md").read_text() == text
    png = (tmp_path / "out/report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20]), int.from_bytes(png[20:24])) == (1800, 1500)  # 18 x 15 inches at 100 dpi

    per_config = dict(zip(row(text, "metric"), row(text, "peak eval accuracy"), strict=True))  # the first table
    assert per_config["baseline fp32"] == "0.7100 ± 0.0100 (n=3)"
    assert per_config["mixup α=1.0 fp32"] == "0.7500 ± 0.0200 (n=3)"
    claims = [line for line in text.splitlines() if line.startswith("| gives higher accuracy")]
    assert claims == [
        "| gives higher accuracy | peak eval accuracy | +0.0400 [+0.0152, +0.0648] (n=3) | **supported (n=3)** |",
        "| gives higher accuracy | final eval accuracy | +0.0200 [-0.0048, +0.0448] (n=3) | **not shown (n=3)** |"]
    assert "| over-fits less | generalization gap (lower) | +0.1100 [+0.0852, +0.1348] (n=3) | " \
           "**contradicted (n=3)** |" in text
    assert "| over-fits less | final eval loss (lower) | -1.0000 [-1.0000, -1.0000] (n=3) | **supported (n=3)** |" \
        in text
    assert ("- Mixup gives higher accuracy: **supported (n=3)** for peak acc; **not shown (n=3)** for final acc.\n"
            "- Mixup over-fits less: **contradicted (n=3)** for gen. gap; **supported (n=3)** for final loss.\n"
            "- Mixup is more robust to FGSM: **not shown (n=3)** for FGSM 1/255, FGSM 2/255, FGSM 4/255, FGSM 8/255; "
            "**contradicted (n=3)** for FGSM 1/255 vs early-stopped, FGSM 2/255 vs early-stopped, "
            "FGSM 4/255 vs early-stopped, FGSM 8/255 vs early-stopped.") in text
    # The early-stopped baseline: mixup's final FGSM accuracy (0.3) against the baseline's lowest-loss one (0.4).
    early = [line for line in text.splitlines() if line.startswith("| is more robust") and "early-stopped" in line]
    assert len(early) == 4 and all("-0.1000 [-0.1000, -0.1000] (n=3) | **contradicted (n=3)**" in x for x in early)
    every_metric = text.split("## Mixup against the baseline, every metric")[1]
    assert row(every_metric, "final eval loss")[2:] == ["-1.0000 [-1.0000, -1.0000] (n=3)", "yes", "supported (n=3)"]


def test_alpha_bf16_and_a_partial_study(study, tmp_path):
    (study / ".mixup-alpha1.0-bf16-seed0.tmp").mkdir()  # a run being recorded: not yet a result
    text = report(study, tmp_path / "out")
    assert row(text, "baseline fp32")[1:] == ["5", "3: [0, 1, 2]", "missing seeds [3, 4]"]
    assert row(text, "mixup α=0.4 fp32")[1:] == ["3", "0", "not yet run"]
    assert "Not yet run: mixup α=0.4 fp32, mixup α=1.0 bf16." in text
    per_config = dict(zip(row(text, "metric"), row(text, "final eval accuracy"), strict=True))
    assert per_config["mixup α=0.2 fp32"] == "0.6600 (n=1: no spread)"
    assert list(per_config)[1:] == ["baseline fp32", "mixup α=0.2 fp32", "mixup α=1.0 fp32", "mixup α=2.0 fp32",
                                    "baseline bf16"]  # only what has run, mixup by alpha

    assert row(text, "2.0")[1:] == ["0.7500 ± 0.0100 (n=3)", "+0.0400 [+0.0152, +0.0648] (n=3)",
                                    "distinguishable (the interval excludes 0)"]
    assert row(text, "0.2")[2:] == ["-0.0400 (n=1: no interval)", "not shown (n=1: no interval)"]
    assert row(text, "0.4")[1:] == ["not yet run", "no paired seeds yet", "not yet run"]
    assert "Best alpha on mean final accuracy: **2.0**" in text

    bf16 = text.split("### baseline bf16 against baseline fp32")[1].split("###")[0]
    assert row(bf16, "final eval accuracy")[3:] == ["+0.0020 [-0.0107, +0.0147] (n=2)", "yes", "0.0100 (n=3)", "yes"]
    assert row(bf16, "ECE, final weights")[3:] == ["+0.2000 [+0.2000, +0.2000] (n=2)", "no", "0.0000 (n=3)", "no"]
    assert ("Within seed noise by (a) the interval contains 0, on 13 of 14 metrics (not on: ECE, final weights); "
            "by (b) |difference| <= fp32 SD, on 13 of 14 metrics (not on: ECE, final weights).") in bf16
    mixup_bf16 = text.split("### mixup α=1.0 bf16 against mixup α=1.0 fp32")[1]
    assert row(mixup_bf16, "final eval accuracy")[3] == "no paired seeds yet"
    speed = text.split("Speed, on the seeds")[1]
    assert row(speed, "baseline")[1:] == ["300 ± 0 (n=2)", "600 ± 0 (n=2)", "2.00 (n=2)", "5000 ± 0 (n=2)",
                                          "2500 ± 0 (n=2)", "0.50 (n=2)"]
    assert row(speed, "mixup")[3] == "no paired seeds yet"
    assert "shared 2-core" in text
    assert f"- code commits: `{COMMIT}` (12 runs)" in text
    assert "0.7259" in text and "0.7409" in text


def test_one_run_gives_means_without_spread(tmp_path):
    write_run(tmp_path / "runs", "baseline", 0, final_acc=0.6788)
    text = report(tmp_path / "runs", tmp_path / "out")
    assert row(text, "final eval accuracy")[1:] == ["0.6788 (n=1: no spread)"]
    assert "| gives higher accuracy | final eval accuracy | no paired seeds yet | **not yet run** |" in text
    assert "No mixup fp32 run yet" in text
    assert (tmp_path / "out/report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "summary.json").write_text(json.dumps({"peak_eval_acc": 0.7})),
     "summary.json has no final_eval_acc"),
    (lambda f: (f / "evaluation.json").write_text("{not json"), "evaluation.json is not valid JSON"),
    (lambda f: (f / "run.json").unlink(), "no run.json"),
    (lambda f: (f / "run.json").write_text(json.dumps({**json.loads((f / "run.json").read_text()), "variant": "x"})),
     "names no planned configuration"),
])
def test_a_malformed_run_folder_is_one_error_naming_it(study, tmp_path, breakage, message):
    broken = study / "mixup-alpha2.0-fp32-seed1"
    breakage(broken)
    with pytest.raises(UserError, match=message) as error:
        report(study, tmp_path / "out")
    assert str(broken) in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_params_difference_is_reported(study, tmp_path):
    params = study / "baseline-fp32-seed2/params.yaml"
    params.write_text(params.read_text().replace("epochs: 35", "epochs: 2"))
    assert "the runs DIFFER in `train.epochs`" in report(study, tmp_path / "out")


def test_the_study_command_writes_the_report_and_fails_in_one_line(study, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    command = [sys.executable, "-m", "tools.study", "report", "--runs", str(study), "--out", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("# Mixup study")
    assert (tmp_path / "out/report.md").read_text() in result.stdout
    assert (tmp_path / "out/report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    shutil.rmtree(tmp_path / "out")
    (study / "baseline-fp32-seed1/summary.json").write_text("{}")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {study / 'baseline-fp32-seed1'}: summary.json has no "
                                                  "peak_eval_acc"]
    assert not (tmp_path / "out").exists()


def test_the_committed_report_is_the_committed_runs_report(tmp_path):
    """study/report.md (the README's figures and tables) regenerates, unchanged, from study/runs/."""
    text = report(ROOT / "study/runs", tmp_path)
    assert text == (ROOT / "study/report.md").read_text(), \
        "study/report.md is stale: run `python -m tools.study report` and commit study/"
    assert "25 runs read (25 of the 25 planned)" in text
