"""What mixup is claimed to buy, measured: FGSM adversarial accuracy and calibration (ECE).

Images live on FastEstimator's [0, 1] Minmax scale, so an FGSM epsilon of 8/255 moves each value
by 8/255 of the image's own range, and attacked images are clipped back to [0, 1].
"""
import torch
import torch.nn.functional as F

from lenet_mixup.evaluation import in_chunks


def fgsm(model, x, y, epsilon):
    """Fast gradient sign attack (Goodfellow et al. 2015): x + epsilon * sign(grad_x CE), clipped to [0, 1]."""
    return attack(x, gradient_sign(model, x, y), epsilon)


def gradient_sign(model, x, y):
    """sign(grad_x CE(model(x), y)): the direction FGSM moves every image, whatever the epsilon."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad.sign()


def attack(x, sign, epsilon):
    return (x + epsilon * sign).clamp(0, 1).detach()


def fgsm_accuracies(model, x, y, epsilons):
    """[accuracy on FGSM-attacked copies of x, for each epsilon], each image attacked against its own gradient.

    The gradient does not depend on epsilon, so each chunk's is computed once for all the epsilons.
    """
    def correct(xs, ys):
        sign = gradient_sign(model, xs, ys)
        with torch.inference_mode():
            return [(model(attack(xs, sign, e)).argmax(1) == ys).sum().item() for e in epsilons]
    counts = in_chunks(correct, model, x, y)
    return [sum(chunk[i] for chunk in counts) / len(x) for i in range(len(epsilons))]


def reliability_bins(confidence, correct, bins):
    """Per equal-width confidence bin over (0, 1]: (lower edge, upper edge, count, mean confidence, accuracy)."""
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(confidence, edges[1:-1], right=False)  # (lo, hi] -> bin index
    rows = []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        rows.append((edges[b].item(), edges[b + 1].item(), n,
                     confidence[mask].mean().item() if n else 0.0,
                     correct[mask].float().mean().item() if n else 0.0))
    return rows


def expected_calibration_error(probs, labels, bins=15):
    """ECE = sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)| (Guo et al. 2017)."""
    confidence, predicted = probs.max(1)
    correct = predicted == labels
    return sum(n / len(labels) * abs(acc - conf)
               for _, _, n, conf, acc in reliability_bins(confidence, correct, bins) if n)
