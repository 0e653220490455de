"""The tests hold whatever `make_optimizer` builds (lenet_mixup/optim.py, the one place to change the optimizer):
with SGD and momentum written there, as a user would, the unit tests that train still pass."""
import re
import shutil
import subprocess
import sys

from tests.helpers import ROOT, dvc_env

SGD = '''def make_optimizer(model, train, device):
    """SGD with momentum, in place of the tutorial's Adam."""
    return torch.optim.SGD(model.parameters(), lr=train["lr"], momentum=0.9)
'''
# Every unit test file that trains (train_variant, train_epoch, train_step or the CUDA path's step; the CUDA
# tests skip without a GPU).
TRAINING = ["test_train.py", "test_fast_path.py", "test_cpu.py", "test_live_files.py", "test_variants.py",
            "test_cuda.py"]


def test_the_unit_tests_that_train_pass_with_sgd_in_make_optimizer(tmp_path):
    project = tmp_path / "project"
    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]  # the checkout as it is
    tracked = subprocess.run(listed, cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.split("\0"):
        if name and (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, project / name)
    optim = project / "lenet_mixup/optim.py"
    text, replaced = re.subn(r"^def make_optimizer\(.*", SGD, optim.read_text(), flags=re.S | re.M)
    assert replaced == 1, "lenet_mixup/optim.py has no make_optimizer to replace"
    optim.write_text(text)
    env = {**dvc_env(), "PYTHONPATH": str(project)}
    script = ("import torch; from lenet_mixup import steps; "
              "print(type(steps.new_model_and_optimizer(torch.device('cpu'), {'lr': 0.01})[1]).__name__)")
    built = subprocess.run([sys.executable, "-c", script], cwd=project, env=env, capture_output=True, text=True)
    assert built.stdout.split() == ["SGD"], built.stdout + built.stderr
    tests = [f"tests/unit/{name}" for name in TRAINING]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=project,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1] and "failed" not in done.stdout.splitlines()[-1]
