"""A small ResNet for the README: a stem conv, three basic blocks, global pooling, a linear.

gpa analyze examples/tiny_resnet.py
"""

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class TinyResNet(nn.Module):
    def __init__(self, blocks: int = 3, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(*[BasicBlock(width) for _ in range(blocks)])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def build_model(blocks: int = 3, width: int = 16) -> nn.Module:
    return TinyResNet(blocks, width)


input_shape = (1, 3, 32, 32)

# For `gpa measure examples/tiny_resnet.py`: (images, labels) batches as a data loader
# gives them, what of a batch forward takes, and the training loss (without these:
# synthetic inputs and a virtual loss).
_draw = torch.Generator().manual_seed(0)
example_batches = [
    (torch.randn(8, 3, 32, 32, generator=_draw), torch.randint(0, 10, (8,), generator=_draw))
    for _ in range(4)
]


def forward_inputs(batch):
    images, _ = batch
    return images


def loss_fn(outputs, batch):
    _, labels = batch
    return nn.functional.cross_entropy(outputs, labels)
