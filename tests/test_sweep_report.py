"""The sweep report's reading of `dvc exp show --json` and its mean/std table."""
import json

from tools.sweep_report import experiments, report

FGSM = {"1/255": 0.5, "8/255": 0.2}


def run_entry(alpha, seed, mixup_acc, epochs=35):
    """One experiment as `dvc exp show --json` lists it; the baseline depends on the seed alone."""
    accuracy = {"baseline": 0.70 + 0.01 * seed, "mixup": mixup_acc}
    metrics = {}
    for v in ("baseline", "mixup"):
        metrics[f"metrics/{v}/summary.json"] = {"data": {"peak_eval_acc": accuracy[v], "final_eval_acc": accuracy[v]}}
        metrics[f"metrics/{v}/evaluation.json"] = {"data": {"final": {"ece": 0.1, "fgsm_acc": FGSM}}}
    params = {"train": {"epochs": epochs, "seed": seed}, "mixup": {"alpha": alpha, "warmup": 1}}
    return {"rev": f"r{alpha}-{seed}", "data": {"params": {"params.yaml": {"data": params}}, "metrics": metrics}}


def test_groups_by_alpha_and_seed_and_skips_unfinished_and_unrelated_runs():
    shown = [run_entry(1.0, 0, 0.70),
             {"rev": "HEAD", "experiments": [{"revs": [run_entry(0.4, 0, 0.73), run_entry(0.4, 1, 0.75),
                                                       run_entry(1.0, 1, 0.71), run_entry(0.4, 0, 0.73),
                                                       run_entry(0.4, 2, 0.9, epochs=2)]}]},
             {"rev": "queued", "data": {"params": {"params.yaml": {"data": {}}}, "metrics": {}}}]
    found = experiments(json.loads(json.dumps(shown)))
    assert sorted(found) == [(0.4, 0), (0.4, 1), (1.0, 0), (1.0, 1)]  # the 2-epoch run is another sweep
    _, table = report(found)
    lines = table.splitlines()
    assert lines[0] == "| metric | alpha 0.4 | alpha 1.0 | baseline |"
    # mixup at alpha 0.4: 0.73 and 0.75 -> mean 0.74, sample std 0.0141; alpha 1.0: 0.70 and 0.71
    # baseline: 0.70 and 0.71 for seeds 0 and 1 -> 0.705 +- 0.0071
    assert lines[2] == ("| peak eval accuracy | 0.7400 ± 0.0141 (n=2) | 0.7050 ± 0.0071 (n=2) "
                        "| 0.7050 ± 0.0071 (n=2) |")
    assert "| FGSM accuracy at the largest epsilon | 0.2000 ± 0.0000 (n=2)" in table
