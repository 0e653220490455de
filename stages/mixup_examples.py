"""Stage `mixup_examples`: a picture of what mixup feeds the network.

Draws a few real training batches mixed as the mixup variant mixes them (one lambda per batch from
Beta(alpha, alpha), each image blended with its predecessor) and saves metrics/mixup_examples.png,
each mixed image titled with its two labels and their weights. A picture needs no torch (its import
alone takes about 2 s), so the blend is lenet_mixup.mixup.mixup_batch's, in numpy
(tests/test_model_mixup.py checks that the two agree).
"""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lenet_mixup import paths  # noqa: E402
from lenet_mixup.params import load_params  # noqa: E402
from lenet_mixup.stage import UserError, atomic_output, run  # noqa: E402

ROWS, COLUMNS = 4, 6  # batches shown, images per batch


def blend(x, lam):
    """mixup_batch in numpy: every image blended with its predecessor in the batch (the first with the last)."""
    return lam * x + (1 - lam) * np.roll(x, 1, axis=0)


def main():
    params = load_params("train", "mixup")
    if not paths.prepared_file("train_x").is_file():
        raise UserError(f"{paths.PREPARED} is missing: run `dvc repro prepare` first")
    images = np.load(paths.prepared_file("train_x"), mmap_mode="r")
    labels = np.load(paths.prepared_file("train_y"))
    classes = json.loads((paths.PREPARED / "classes.json").read_text())
    rng = np.random.default_rng(params["train"]["seed"])
    lams = rng.beta(params["mixup"]["alpha"], params["mixup"]["alpha"], ROWS)
    # 1170 px wide: within the plots page (`dvc plots show`), none of it cut off
    fig, axes = plt.subplots(ROWS, COLUMNS, figsize=(1.95 * COLUMNS, 2.3 * ROWS), constrained_layout=True)
    for row, lam in enumerate(lams):
        idx = np.sort(rng.choice(len(images), COLUMNS, replace=False))
        mixed, y = blend(images[idx], lam), labels[idx]
        for col, ax in enumerate(axes[row]):
            ax.imshow(mixed[col].transpose(1, 2, 0).clip(0, 1), interpolation="nearest")
            ax.set_title(f"{lam:.2f} {classes[y[col]]}\n{1 - lam:.2f} {classes[y[col - 1]]}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"Mixup as trained (alpha = {params['mixup']['alpha']}): each image blended with its "
                 "neighbour in the batch, one lambda per batch (row)", fontsize=11)
    with atomic_output(paths.MIXUP_EXAMPLES_PNG) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    print(f"wrote {paths.MIXUP_EXAMPLES_PNG}")


if __name__ == "__main__":
    run(main)
