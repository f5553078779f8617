"""Small torch networks of the shapes of MLPerf Tiny's models (untrained: for bit-exactness and speed)."""

from __future__ import annotations

import torch
from torch import nn


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(y + (self.skip(x) if self.skip is not None else x))


class ResNet8(nn.Module):
    """MLPerf Tiny image classification: 3x32x32, 16-32-64 channels, 3 residual stages, 10 classes."""

    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.stages = nn.Sequential(_ResBlock(16, 16, 1), _ResBlock(16, 32, 2), _ResBlock(32, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(torch.relu(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class DSCNN(nn.Module):
    """MLPerf Tiny keyword spotting: 1x49x10 MFCCs, a 10x4 stride-2 conv, 4 depthwise-separable blocks."""

    input_shape = (1, 49, 10)

    def __init__(self, channels: int = 64, num_classes: int = 12) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, (10, 4), (2, 2), (5, 1)), nn.ReLU()]
        for _ in range(4):
            layers += [
                nn.Conv2d(channels, channels, 3, 1, 1, groups=channels),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 1),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d((25, 5))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class MobileNetV1(nn.Module):
    """MLPerf Tiny visual wake words shape, scaled down: width 0.25, 3x48x48 input, 2 classes."""

    input_shape = (3, 48, 48)

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        cfg = [(8, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1)]
        layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU6()]
        for cin, cout, stride in cfg:
            layers += [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), nn.ReLU6(), nn.Conv2d(cin, cout, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
