"""FastEstimator's LeNet for 32x32x3 images, with Keras' initialisation.

Conv 3->32 3x3, ReLU, MaxPool 2 -> Conv 32->64 3x3, ReLU, MaxPool 2 -> Conv 64->64 3x3, ReLU
-> Flatten (64*4*4) -> Dense 64, ReLU -> Dense 10. Valid padding, 122,570 parameters.
The original ends in a softmax; we return logits and let the loss apply it (the same model).
"""
from torch import nn

INPUT_SHAPE, NUM_CLASSES = (3, 32, 32), 10  # what the model takes: CIFAR-10's images and classes
NUM_PARAMETERS = 122_570


def lenet(num_classes=NUM_CLASSES):
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, num_classes),
    )
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            # Keras defaults: glorot_uniform kernels (fan_in/fan_out include the receptive field,
            # as in torch's xavier_uniform_) and zero biases.
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return model
