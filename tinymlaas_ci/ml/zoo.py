"""Small reference models.

They live in the package (not in the example folder) so that a pickled instance unpickles
wherever ``tinymlaas_ci`` is installed: inside a stage container, on a board, in the tests.
Each model carries ``input_shape`` (one sample, without the batch axis) so that exporting it
needs no ``model.input_shape`` in the run spec.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN", "TinyCNN", "count_parameters"]


class DigitsCNN(nn.Module):
    """A CNN for 1x8x8 grayscale digits (scikit-learn's ``load_digits``), 10 classes, ~38k parameters."""

    input_shape = (1, 8, 8)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


class TinyCNN(nn.Module):
    """A second, different model: 3x16x16 colour inputs, 4 classes, global average pooling.

    Used by the tests to push a model the example does not use through every stage.
    """

    input_shape = (3, 16, 16)

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())
