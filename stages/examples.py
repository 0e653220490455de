"""Stage `examples@<variant>`: python -m stages.examples VARIANT

A picture of what a variant feeds the network: a few real training batches (a row each) drawn for and
transformed by the variant's own `draw` and `transform`, the functions its training calls
(lenet_mixup/variant.py). Each image is titled with its label and, when its label weight is below 1, the
label of the image mixed into it, with their weights. Writes metrics/<variant>/examples.png.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lenet_mixup import paths, variant  # noqa: E402
from lenet_mixup.params import load_params  # noqa: E402
from lenet_mixup.stage import UserError, atomic_output, run  # noqa: E402

ROWS, COLUMNS = 4, 6  # batches shown, images per batch


def title(weight, label, partner_label):
    return label if weight is None or weight == 1 else f"{weight:.2f} {label}\n{1 - weight:.2f} {partner_label}"


def image_weights(weight, n):
    """Each image's weight of its own label: a per-batch weight for all n, a per-image one each, or None."""
    if weight is None:
        return [None] * n
    return [weight.item()] * n if weight.dim() == 0 else weight.tolist()


def main():
    if len(sys.argv) != 2:
        raise UserError(f"usage: python -m stages.examples VARIANT (one of {', '.join(variant.available())})")
    name = sys.argv[1]
    transform = variant.load(name)
    params = load_params("train", name)
    if not paths.prepared_file("train_x").is_file():
        raise UserError(f"{paths.PREPARED} is missing: run `dvc repro prepare` first")
    images = np.load(paths.prepared_file("train_x"), mmap_mode="r")
    labels = np.load(paths.prepared_file("train_y"))
    classes = json.loads((paths.PREPARED / "classes.json").read_text())
    torch.manual_seed(params["train"]["seed"])
    pick = torch.Generator().manual_seed(params["train"]["seed"])
    # 1170 px wide: within the plots page (`dvc plots show`), none of it cut off
    fig, axes = plt.subplots(ROWS, COLUMNS, figsize=(1.95 * COLUMNS, 2.3 * ROWS), constrained_layout=True)
    for row in range(ROWS):
        idx = torch.randperm(len(images), generator=pick)[:COLUMNS].sort().values.numpy()
        batch = torch.from_numpy(images[idx].copy())
        shown, weight = transform.transform(batch, transform.draw(params[name], batch.shape, "cpu"), params[name])
        y = labels[idx]
        for col, (ax, own) in enumerate(zip(axes[row], image_weights(weight, COLUMNS), strict=True)):
            ax.imshow(shown[col].numpy().transpose(1, 2, 0).clip(0, 1), interpolation="nearest")
            ax.set_title(title(own, classes[y[col]], classes[y[col - 1]]), fontsize=9)
            ax.axis("off")
    settings = ", ".join(f"{k} {v}" for k, v in params[name].items())
    fig.suptitle(f"What {name} feeds the network: real training batches, {transform.ACTION}, a batch per row"
                 + (f"; {settings}" if settings else ""), fontsize=11)
    with atomic_output(paths.examples_png(name)) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    print(f"wrote {paths.examples_png(name)}")


if __name__ == "__main__":
    run(main)
