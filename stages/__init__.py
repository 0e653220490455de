"""Stage scripts of the LeNet + mixup CIFAR-10 pipeline and the small modules they share."""
