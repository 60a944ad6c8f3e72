"""Small models to try mixq on: a digits CNN trained on scikit-learn's digits, a BERT and a
ResNet-like CNN built from configs, an MLP (`mixq.zoo.models`)."""

from mixq.zoo.models import (
    DigitsCNN,
    DigitsData,
    bert,
    digits_cnn,
    digits_data,
    mlp,
    resnet_like,
    train_digits_cnn,
)

__all__ = [
    "DigitsCNN",
    "DigitsData",
    "bert",
    "digits_cnn",
    "digits_data",
    "mlp",
    "resnet_like",
    "train_digits_cnn",
]
