"""The library the pipeline's stages, the benchmarks, the tools and the tests share.

One module per concept: model (LeNet), mixup (the math), steps (the training step, CPU and CUDA),
training (the training loop and its resume state), evaluation (the one evaluation loop),
robustness (FGSM, calibration), data (prepared arrays in memory), device, cifar (the archive
format), params (the params schema), paths, metrics (the metrics files), plotting, stage (errors
a user can act on, atomic outputs). This file imports nothing, so it is no stage's dependency.
"""
