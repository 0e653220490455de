"""The report on results of known numbers (synthetic archives and `dvc exp show --json` copies), the
statistics it rests on, and the committed study report, regenerated from the committed archive."""
import json
import os
import re
import subprocess
import sys

import pytest

from lenet_mixup.params import dump_yaml, read_yaml
from lenet_mixup.stage import UserError
from tests.helpers import ROOT, project_params
from tools.report import load, report, variant_order
from tools.runs import read_archive, read_experiments
from tools.stats import paired, spread, t_quantile, verdict

PARAMS = read_yaml(project_params())
# Differences mixup (alpha 1.0) - baseline, paired by seed 0, 1, 2:
#   peak acc   d = .03 .04 .05  mean .04, SD .01 -> 95% CI .04 -+ 4.302653 * .01 / sqrt(3) = [.0152, .0648]
#   final acc  d = .02 .03 .01  mean .02, SD .01 -> [-.0048, .0448]: contains 0
#   gap        d = .10 .11 .12  mean .11         -> [.0852, .1348]: mixup over-fits MORE (lower is better)
BASELINE = {"peak": (0.70, 0.71, 0.72), "final": (0.68, 0.69, 0.70), "gap": (0.2, 0.2, 0.2)}
MIXUP = {"peak": (0.73, 0.75, 0.77), "final": (0.70, 0.72, 0.71), "gap": (0.30, 0.31, 0.32)}
# A variant the project has but does not train by default: CutMix, the baseline's peak accuracy plus 0.02.
THREE = ["baseline", "mixup", "cutmix"]
STUDY_REPORT = ["--archive", "study/runs", "--absent", "train.precision=fp32", "--absent", "evaluate.batch_size=1000",
                "--reference", "variant=baseline", "--reference", "mixup.alpha=1.0", "--reference",
                "train.precision=fp32", "--out", "study"]
CUTMIX_REPORT = ["--archive", "study/cutmix/runs", "--out", "study/cutmix"]


# Three of study/claims.yaml's metrics and claims: a figure of three panels draws fast.
CLAIMS = """metrics:
  - {name: peak eval accuracy, at: summary.peak_eval_acc, better: higher}
  - {name: final eval accuracy, at: summary.final_eval_acc, better: higher}
  - {name: generalization gap, at: evaluation.final.generalization_gap, better: lower}
claims:
  - {claim: mixup gives higher accuracy, metric: peak eval accuracy,
     configuration: {variant: mixup, mixup.alpha: 1.0}, against: {variant: baseline}}
  - {claim: mixup gives higher accuracy, metric: final eval accuracy,
     configuration: {variant: mixup, mixup.alpha: 1.0}, against: {variant: baseline}}
  - {claim: mixup over-fits less, metric: generalization gap,
     configuration: {variant: mixup, mixup.alpha: 1.0}, against: {variant: baseline}}
"""


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    """The report reads dvc.yaml from the project root."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def claims(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text(CLAIMS)
    return path


def params(**dotted):
    """The committed params with some dotted keys set (a value of `...` removes the key)."""
    nested = json.loads(json.dumps(PARAMS))
    for key, value in dotted.items():
        *sections, name = key.split(".")
        node = nested
        for section in sections:
            node = node[section]
        if value is ...:
            node.pop(name, None)
        else:
            node[name] = value
    return nested


def metrics(peak, final, gap=0.2):
    summary = {"peak_eval_acc": peak, "final_eval_acc": final, "final_eval_loss": 1.0, "train_seconds": 1.0}
    evaluation = {w: {"ece": 0.1, "generalization_gap": gap, "fgsm_acc": {f"{e}/255": 0.3 for e in (1, 2, 4, 8)}}
                  for w in ("final", "best")}
    return {"summary": summary, "evaluation": evaluation}


def write_run(archive, name, run_params, variants, info=None):
    """One run folder of an archive: params.yaml, run.json and a folder per variant."""
    folder = archive / name
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(dump_yaml(run_params))
    (folder / "run.json").write_text(json.dumps(info or {"name": name, "code_commit": "c0ffee", "host": "test"}))
    for variant, files in variants.items():
        (folder / variant).mkdir()
        for file, data in files.items():
            (folder / variant / f"{file}.json").write_text(json.dumps(data))
    return folder


def alpha_grid(archive, alphas=(1.0,), seeds=range(3), mixup_only=False, suffix="", shift=0.0, **extra):
    """One run per alpha and seed, each with both variants (as an experiment has): mixup's peak accuracy
    MIXUP's plus (alpha - 1) / 10, the baseline's the same for every alpha (it does not depend on alpha);
    both plus `shift`, their params with `extra` set."""
    for alpha in alphas:
        for seed in seeds:
            variants = {"mixup": metrics(MIXUP["peak"][seed] + (alpha - 1) / 10 + shift, MIXUP["final"][seed],
                                         MIXUP["gap"][seed])}
            if not mixup_only:
                variants["baseline"] = metrics(BASELINE["peak"][seed] + shift, BASELINE["final"][seed],
                                               BASELINE["gap"][seed])
            write_run(archive, f"alpha{alpha}-seed{seed}{suffix}",
                      params(**{"mixup.alpha": alpha, "train.seed": seed}, **extra), variants)
    return archive


def row(text, *first_cells):
    """The cells of the Markdown table rows whose first cells are `first_cells`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:len(first_cells)] == list(first_cells):
            return cells
    raise AssertionError(f"no row {first_cells!r} in:\n{text}")


def column(text, section, header):
    """{first cell: the cell under `header`} of the first table after the `section` heading."""
    lines = text.split(section, 1)[1].split("\n## ", 1)[0].splitlines()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    at = rows[0].index(header)
    return {r[0]: r[at] for r in rows[2:]}


def archive_report(archive, tmp_path, absent=None, **options):
    results, source = load(archive=archive, absent=absent)
    options.setdefault("claims_file", tmp_path / "claims.yaml")
    if not options["claims_file"].exists():
        options["claims_file"].write_text(CLAIMS)
    return report(results, source, absent=absent, out=tmp_path / "out", **options)


def test_t_quantile_matches_the_tables_and_the_verdicts_follow_the_interval():
    assert t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-6)
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)
    assert t_quantile(0.975, 30) == pytest.approx(2.042272, abs=1e-6)
    assert t_quantile(0.995, 4) == pytest.approx(4.604095, abs=1e-6)
    p = paired({0: 0.70, 1: 0.71, 2: 0.72}, {0: 0.73, 1: 0.75, 2: 0.77})
    assert (p.n, round(p.mean, 6), round(p.low, 4), round(p.high, 4)) == (3, 0.04, 0.0152, 0.0648)
    assert verdict(p, +1) == "supported" and verdict(p, -1) == "contradicted"
    assert paired({0: 1.0}, {0: 2.0, 1: 3.0}) == (1, 1.0, None, None) and verdict(paired({0: 1.0}, {0: 2.0}), 1) == \
        "not shown"
    assert spread([0.5]) == (1, 0.5, None) and spread([]) == (0, None, None)


def test_intervals_verdicts_and_the_baseline_once_per_seed(tmp_path):
    archive = alpha_grid(tmp_path / "runs", alphas=(0.2, 1.0))
    text = archive_report(archive, tmp_path)
    assert (tmp_path / "out/report.md").read_text() == text
    assert (tmp_path / "out/report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 6 runs, 12 results: the baseline of alpha 0.2 and of alpha 1.0 is one computation per seed.
    assert "9 results in 3 configurations" in text and "3 more results were the same computation" in text
    assert row(text, "baseline") == ["baseline", "3: 0, 1, 2"]
    assert row(text, "mixup alpha=1.0")[1] == "3: 0, 1, 2"
    assert row(text, "mixup gives higher accuracy", "peak eval accuracy", "mixup alpha=1.0 - baseline")[3:] == [
        "+0.0400 [+0.0152, +0.0648] (n=3)", "**supported**"]
    assert row(text, "mixup gives higher accuracy", "final eval accuracy")[3:] == [
        "+0.0200 [-0.0048, +0.0448] (n=3)", "not shown"]
    assert row(text, "mixup over-fits less", "generalization gap")[3:] == [
        "+0.1100 [+0.0852, +0.1348] (n=3)", "**contradicted**"]
    per_config = column(text, "## Every metric", "baseline")
    assert per_config["peak eval accuracy"] == "0.7100 ± 0.0100 (n=3)"
    against = column(text, "## Against `variant=baseline`", "mixup alpha=0.2 - baseline")
    assert against["peak eval accuracy"] == "-0.0400 [-0.0648, -0.0152] (n=3)"  # 0.2 lowers peak acc by 0.08
    assert "- code_commit: `c0ffee` (6 runs)" in text


def test_one_seed_gives_no_sd_and_no_interval(tmp_path):
    text = archive_report(alpha_grid(tmp_path / "runs", seeds=[0]), tmp_path)
    assert column(text, "## Every metric", "mixup")["peak eval accuracy"] == "0.7300 (n=1)"
    assert row(text, "mixup gives higher accuracy", "peak eval accuracy")[3:] == [
        "+0.0300 (n=1: no interval)", "not shown"]


def test_a_two_param_grid_is_compared_within_the_other_param(tmp_path):
    """alpha x precision: the baseline depends on precision, not on alpha; bf16 lowers every accuracy by 0.01."""
    archive = alpha_grid(tmp_path / "runs", alphas=(0.4, 1.0))
    alpha_grid(archive, alphas=(0.4, 1.0), suffix="-bf16", shift=-0.01, **{"train.precision": "bf16"})
    text = archive_report(archive, tmp_path, references=[{"variant": "baseline"}, {"train.precision": "fp32"}])
    assert "Swept: `train.precision` (fp32, bf16), `mixup.alpha` (0.4, 1.0)." in text
    assert row(text, "baseline precision=bf16")[1] == "3: 0, 1, 2"
    assert "18 results in 6 configurations" in text
    assert "6 more results were the same computation" in text  # 2 baselines per seed and precision, counted once
    claims = [line for line in text.splitlines() if line.startswith("| mixup gives higher accuracy | peak")]
    assert [row(c, "mixup gives higher accuracy")[2] for c in claims] == [
        "mixup precision=fp32 alpha=1.0 - baseline precision=fp32", "mixup precision=bf16 alpha=1.0 - baseline "
        "precision=bf16"]
    bf16 = column(text, "## Against `train.precision=fp32`", "mixup precision=bf16 alpha=0.4 - mixup precision=fp32 "
                                                              "alpha=0.4")
    assert bf16["peak eval accuracy"] == "-0.0100 [-0.0100, -0.0100] (n=3)"
    assert column(text, "## Against `train.precision=fp32`", "baseline precision=bf16 - baseline precision=fp32")[
        "final eval accuracy"] == "+0.0000 [+0.0000, +0.0000] (n=3)"


def test_without_the_baseline_the_reference_is_the_grids_first_value(tmp_path):
    text = archive_report(alpha_grid(tmp_path / "runs", alphas=(2.0, 0.5, 1.0), mixup_only=True), tmp_path)
    assert "## Against `mixup.alpha=0.5`" in text and "| baseline" not in text and "- baseline" not in text
    assert column(text, "## Against", "mixup alpha=2.0 - mixup alpha=0.5")["peak eval accuracy"] == \
        "+0.1500 [+0.1500, +0.1500] (n=3)"
    assert "No claim is about a configuration (and its reference) that ran." in text


def test_a_param_a_run_lacks_is_a_value_of_its_own_unless_told(tmp_path):
    """Runs from before a param was added (no train.precision) never pool with runs that have it."""
    archive = alpha_grid(tmp_path / "runs", seeds=[0, 1])
    alpha_grid(tmp_path / "runs", seeds=[2], **{"train.precision": ...})
    text = archive_report(archive, tmp_path)
    assert row(text, "baseline precision=fp32")[1] == "2: 0, 1" and row(text, "baseline precision=null")[1] == "1: 2"
    text = archive_report(archive, tmp_path, absent={"train.precision": "fp32"})
    assert row(text, "baseline")[1] == "3: 0, 1, 2" and "A param a run lacks reads as: `train.precision`=fp32" in text


def shown(runs, head):
    """`dvc exp show --json` output: HEAD's row and its experiments, each {name: params} with metrics."""
    def entry(name, p):
        seed, alpha = p["train"]["seed"], p["mixup"]["alpha"]
        files = {"baseline": metrics(BASELINE["peak"][seed], BASELINE["final"][seed]),
                 "mixup": metrics(MIXUP["peak"][seed] + (alpha - 1) / 10, MIXUP["final"][seed]),
                 "cutmix": metrics(BASELINE["peak"][seed] + 0.02, BASELINE["final"][seed])}
        files = {v: files[v] for v in p["variants"]}  # the variants the run's params list, no other
        return {"rev": f"{name}0000000", "name": name, "error": None, "data": {
            "params": {"params.yaml": {"data": p}},
            "metrics": {f"metrics/{v}/{f}.json": {"data": data} for v, fs in files.items() for f, data in fs.items()}}}
    head_row = {**entry("main", head), "rev": "abcdef1234567890", "experiments": [
        {"revs": [entry(name, p)], "name": name} for name, p in runs.items()]}
    queued = {"revs": [{"rev": "queued", "name": "queued", "data": {"params": {"params.yaml": {"data": head}}}}]}
    head_row["experiments"].append(queued)
    return [{"rev": "workspace", "data": head_row["data"], "experiments": None}, head_row]


@pytest.mark.parametrize("grid, head, counted, n_alpha_1", [
    ({(a, s) for a in (0.2, 0.4) for s in (0, 1)}, (1.0, 0), False, None),  # alpha 1.0 is not in the grid
    ({(0.2, 0), (0.2, 1), (1.0, 1)}, (1.0, 0), True, "2: 0, 1"),  # a grid point no experiment has
    ({(0.2, 0), (0.2, 1), (1.0, 0), (1.0, 1)}, (1.0, 0), True, "2: 0, 1"),  # a grid point: counted once
])
def test_head_counts_only_as_a_point_of_the_grid_and_once(tmp_path, claims, grid, head, counted, n_alpha_1):
    runs = {f"alpha{a}-seed{s}": params(**{"mixup.alpha": a, "train.seed": s}) for a, s in sorted(grid)}
    (tmp_path / "shown.json").write_text(json.dumps(shown(runs, params(**{"mixup.alpha": head[0],
                                                                           "train.seed": head[1]}))))
    results, source = load(saved_json=tmp_path / "shown.json")
    text = report(results, source, claims_file=claims, out=tmp_path / "out")
    assert ("is a point of their grid: counted, once" in text) == counted
    assert ("is not a point of their grid: not counted" in text) != counted
    assert row(text, "baseline")[1] == "2: 0, 1"  # every baseline counted once per seed
    if n_alpha_1:
        assert row(text, "mixup alpha=1.0")[1] == n_alpha_1
    else:
        assert "mixup alpha=1.0" not in text
    assert "6 results in 3 configurations" in text  # a queued experiment has no results


def test_a_claim_declared_in_a_users_file_is_judged(tmp_path):
    archive = alpha_grid(tmp_path / "runs", alphas=(0.4, 1.0))
    claims = tmp_path / "user-claims.yaml"
    claims.write_text("metrics:\n  - {name: peak acc, at: summary.peak_eval_acc, better: higher}\n"
                      "  - {name: loss, at: summary.final_eval_loss, better: lower}\n"
                      "claims:\n  - claim: alpha 1.0 beats alpha 0.4\n    metric: peak acc\n"
                      "    configuration: {variant: mixup, mixup.alpha: 1.0}\n    against: {mixup.alpha: 0.4}\n")
    text = archive_report(archive, tmp_path, claims_file=claims)
    assert f"## Claims (`{claims}`)" in text
    assert row(text, "alpha 1.0 beats alpha 0.4") == ["alpha 1.0 beats alpha 0.4", "peak acc",
                                                       "mixup alpha=1.0 - mixup alpha=0.4",
                                                       "+0.0600 [+0.0600, +0.0600] (n=3)", "**supported**"]
    assert list(column(text, "## Every metric", "better")) == ["peak acc", "loss"]
    claims.write_text(claims.read_text().replace("mixup.alpha: 0.4", "mixup.alhpa: 0.4"))
    with pytest.raises(UserError, match=r"claim 'alpha 1.0 beats alpha 0.4': no run has the param mixup.alhpa"):
        archive_report(archive, tmp_path, claims_file=claims)
    claims.write_text("metrics:\n  - {name: acc, at: summary.x, better: up}\n")
    with pytest.raises(UserError, match=r"metric 1 needs a name, at .* and better \(higher or lower\)"):
        archive_report(archive, tmp_path, claims_file=claims)


def test_a_run_with_a_variant_more_reports_it_on_its_own_and_pools_the_baseline(tmp_path):
    """Runs that list CutMix too (`-S 'variants=[baseline,mixup,cutmix]'`): cutmix is a configuration of its own,
    coloured as the pipeline colours it; their baseline and mixup are the same computations as those of the runs
    without it (no variant's results depend on the `variants` list), counted once per seed."""
    archive = alpha_grid(tmp_path / "runs")
    for seed in range(3):
        write_run(archive, f"cutmix-seed{seed}", params(**{"train.seed": seed, "variants": THREE}), {
            "baseline": metrics(BASELINE["peak"][seed], BASELINE["final"][seed], BASELINE["gap"][seed]),
            "mixup": metrics(MIXUP["peak"][seed], MIXUP["final"][seed], MIXUP["gap"][seed]),
            "cutmix": metrics(BASELINE["peak"][seed] + 0.02, BASELINE["final"][seed], BASELINE["gap"][seed])})
    text = archive_report(archive, tmp_path)
    assert "9 results in 3 configurations" in text and "6 more results were the same computation" in text
    assert "Swept: nothing but the seed." in text  # `variants` differs among the runs, no result depends on it
    assert column(text, "## Configurations", "seeds") == {v: "3: 0, 1, 2" for v in THREE}  # in the list's order
    assert column(text, "## Against `variant=baseline`", "cutmix - baseline")["peak eval accuracy"] == \
        "+0.0200 [+0.0200, +0.0200] (n=3)"
    results, _ = load(archive=archive, variants=["cutmix"])  # --variant: any variant a run has
    assert {r.variant for r in results} == {"cutmix"} and variant_order(results) == ["baseline", "mixup", "cutmix"]
    with pytest.raises(UserError, match=r"^--variant cutmx: no run has results of it; the runs' variants: "
                                        r"baseline, cutmix, mixup$"):
        load(archive=archive, variants=["cutmx"])
    # the same runs as experiments: each holds the results of the variants its params list
    runs = {f"cutmix-seed{s}": params(**{"train.seed": s, "variants": THREE}) for s in range(2)}
    experiments, heads = read_experiments(shown(runs, params()))
    assert sorted((r.run, r.variant) for r in experiments) == [(f"cutmix-seed{s}", v) for s in range(2)
                                                               for v in sorted(THREE)]
    assert sorted(r.variant for r in heads) == ["baseline", "mixup"]


def test_an_older_run_without_a_variants_list_reads_as_before(tmp_path):
    """study/runs/ predates params.yaml's `variants`: its variants are its folders', the baseline first."""
    archive = alpha_grid(tmp_path / "runs", seeds=[0], **{"variants": ...})
    results = read_archive(archive)
    assert sorted(r.variant for r in results) == ["baseline", "mixup"] and "variants" not in results[0].params
    assert variant_order([r for r in results if r.variant == "mixup"]) == ["baseline", "mixup"]  # mixup's colour kept


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "mixup/summary.json").unlink(), r"mixup: no summary.json: not a finished run"),
    (lambda f: (f / "mixup/evaluation.json").write_text("{not json"), r"mixup/evaluation.json: unreadable"),
    (lambda f: (f / "run.json").unlink(), r"alpha1.0-seed1: no run.json"),
])
def test_a_malformed_run_folder_is_one_error_naming_it(tmp_path, breakage, message):
    archive = alpha_grid(tmp_path / "runs")
    breakage(archive / "alpha1.0-seed1")
    with pytest.raises(UserError, match=message):
        read_archive(archive)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-m", "tools.report", "--archive", str(archive), "--out",
                             str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert re.match(rf"error: {re.escape(str(archive))}/.*{message}", result.stderr.strip())
    assert not (tmp_path / "out").exists()


def regenerated(name, options, out):
    """A committed study report, regenerated into `out` by `make study-report`'s command: its text."""
    makefile = (ROOT / "Makefile").read_text().replace("\\\n\t", "")
    assert f"{name} = " + " ".join(options) in makefile, f"Makefile's {name} is not the test's"
    command = [sys.executable, "-m", "tools.report", *options[:-1], str(out)]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "MPLBACKEND": "Agg"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for file in ("report.md", "report.png"):
        assert (out / file).read_bytes() == (ROOT / options[-1] / file).read_bytes(), \
            f"{options[-1]}/{file} is stale: run `make study-report` and commit study/"
    return (out / "report.md").read_text()


def test_the_committed_report_is_the_committed_archives_report(tmp_path):
    """study/report.md and study/report.png (the README's figures and tables) regenerate, byte for byte,
    from study/runs/ through `make study-report`'s command."""
    text = regenerated("STUDY_REPORT", STUDY_REPORT, tmp_path)
    assert "25 results in 7 configurations" in text
    assert row(text, "mixup gives higher accuracy", "final eval accuracy",
               "mixup precision=fp32 alpha=1.0 - baseline precision=fp32")[3] == "+0.0415 [+0.0317, +0.0513] (n=5)"


def test_the_committed_cutmix_report_is_its_archives_report(tmp_path):
    """study/cutmix/: three variants in each of three runs, nothing swept but the seed (the configurations
    side by side); a claim against another variant than the baseline (cutmix - mixup); the main study's
    claims about cutmix, whose runs have no cutmix, give no rows there."""
    text = regenerated("CUTMIX_REPORT", CUTMIX_REPORT, tmp_path)
    assert "9 results in 3 configurations" in text and "Swept: nothing but the seed" in text
    assert row(text, "cutmix gives higher accuracy", "final eval accuracy", "cutmix - baseline")[4] == "**supported**"
    assert row(text, "cutmix over-fits less than mixup", "generalization gap", "cutmix - mixup")[3] == \
        "-0.0481 [-0.0521, -0.0441] (n=3)"
    assert "cutmix" not in (ROOT / "study/report.md").read_text()
