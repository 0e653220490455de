"""The optimizer: the one place to change it, for the CPU path and the CUDA graph alike."""
import torch


def make_optimizer(model, train, device):
    """Adam as FastEstimator's tutorial ran it, with Keras' defaults (betas 0.9/0.999, eps 1e-7), lr from params.

    fused: one kernel per step. capturable on CUDA: its step counts stay on the device, as a CUDA graph
    that captures the step needs (lenet_mixup.steps.GraphedEpochs; torch.optim refuses capture otherwise).
    The graph keeps the lr it was captured with, so a schedule would need the lr in a device tensor.
    """
    return torch.optim.Adam(model.parameters(), lr=train["lr"], betas=(0.9, 0.999), eps=1e-7, fused=True,
                            capturable=torch.device(device).type == "cuda")
