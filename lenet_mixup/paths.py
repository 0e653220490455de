"""Every path the pipeline reads or writes, relative to the project root (where dvc runs)."""
from pathlib import Path

PARAMS = Path("params.yaml")
RAW_ARCHIVE = Path("data/raw/cifar-10-python.tar.gz")
PREPARED = Path("data/prepared")
# Per-epoch training state, kept outside DVC's outputs so an interrupted run can resume.
RESUME = Path("data/resume")
MODELS = Path("models")
METRICS = Path("metrics")
COMPARISON_PNG = METRICS / "comparison.png"
COMPARISON_MD = METRICS / "comparison.md"
MIXUP_EXAMPLES_PNG = METRICS / "mixup_examples.png"
# The page template `dvc plots show` fills (.dvc/config: plots.html_template, relative to .dvc/).
PLOTS_PAGE = Path("data/plots-offline.html")

VARIANTS = ("baseline", "mixup")


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
