"""What a training stage shows while it runs, in DVC's own views.

After every epoch (once its resume state is saved) the stage rewrites its epochs.tsv with the rows so
far and its summary.json with the summary so far plus `epochs_done` of `epochs_total`, each atomically
(a reader never sees half a file), so `dvc exp show`, `dvc plots show` and `dvc plots diff` follow the
run, in the workspace and under `dvc queue start`. It then signals the finished epoch as DVCLive does
for DVC's VS Code extension: a small JSON file, {"pid", "step"}, at .dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED
of the repository (DVC_ROOT, which DVC sets for a queued run's temp copy, else the folder holding .dvc),
which the extension watches to refresh its live plots, and removes when the run ends.
"""
import json
import os
from pathlib import Path

from lenet_mixup import paths
from lenet_mixup.metrics import write_summary, write_tsv
from lenet_mixup.stage import atomic_output

SIGNAL = Path(".dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED")


def publish(variant, rows, summary, epochs_total):
    """The files of a run in progress, then the signal that a step (an epoch) was completed."""
    with atomic_output(paths.epochs_tsv(variant)) as tmp:
        write_tsv(rows, tmp)
    with atomic_output(paths.summary_json(variant)) as tmp:
        write_summary({**summary, "epochs_done": len(rows), "epochs_total": epochs_total}, tmp)
    signal = signal_file()
    if signal is not None:
        with atomic_output(signal) as tmp:
            tmp.write_text(json.dumps({"pid": os.getpid(), "step": len(rows) - 1}, sort_keys=True))


def finish():
    """Remove this run's signal, as DVCLive does when its run ends."""
    signal = signal_file()
    try:
        if signal is not None and json.loads(signal.read_text()).get("pid") == os.getpid():
            signal.unlink()
    except (OSError, ValueError):
        pass


def signal_file():
    root = os.environ.get("DVC_ROOT") or next((str(p) for p in [Path.cwd(), *Path.cwd().parents]
                                              if (p / ".dvc").is_dir()), None)
    return Path(root) / SIGNAL if root else None
