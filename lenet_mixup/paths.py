"""Every path the pipeline reads or writes, relative to the project root (where dvc runs)."""
from pathlib import Path

PARAMS = Path("params.yaml")
RAW_ARCHIVE = Path("data/raw/cifar-10-python.tar.gz")
PREPARED = Path("data/prepared")
# Per-epoch training state, kept outside DVC's outputs so an interrupted run can resume.
RESUME = Path("data/resume")
MODELS = Path("models")
# Each variant's results, in metrics/<variant>/: the folder names the variant, for every reader.
METRICS = Path("metrics")
# The comparison of the variants (stage compare). Not inside metrics/: compare depends on all of metrics/.
RESULTS = Path("results")
COMPARISON_PNG = RESULTS / "comparison.png"
COMPARISON_MD = RESULTS / "comparison.md"
# Every variant's rows in one table each, with its name and colour: the data of the `dvc plots` charts.
CURVES_TSV = RESULTS / "epochs.tsv"
FGSM_TSV = RESULTS / "fgsm.tsv"
RELIABILITY_TSV = RESULTS / "reliability.tsv"
# The page template `dvc plots show` fills (.dvc/config: plots.html_template, relative to .dvc/).
PLOTS_PAGE = Path("data/plots-offline.html")


def prepared_file(name):
    """data/prepared/<name>.npy: train_x, train_y, eval_x, eval_y."""
    return PREPARED / f"{name}.npy"


def epochs_tsv(variant):
    return METRICS / variant / "epochs.tsv"


def summary_json(variant):
    return METRICS / variant / "summary.json"


def checkpoint(variant, which):
    """models/<variant>/<which>.pt, which is 'best' (lowest eval loss) or 'final'."""
    return MODELS / variant / f"{which}.pt"


def resume_state(variant):
    return RESUME / f"{variant}.pt"


def evaluation_json(variant):
    return METRICS / variant / "evaluation.json"


def fgsm_tsv(variant):
    return METRICS / variant / "fgsm.tsv"


def reliability_tsv(variant):
    return METRICS / variant / "reliability.tsv"


def predictions_csv(variant):
    return METRICS / variant / "predictions.csv"


def examples_png(variant):
    """A picture of real training batches as the variant feeds them to the network."""
    return METRICS / variant / "examples.png"
