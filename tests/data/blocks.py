"""Two custom blocks of two convs each, then a head conv: for --leaf and --layer-type."""

from torch import nn


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(width, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return self.b(self.a(x).relu()).relu()


class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.b1 = Block(width)
        self.b2 = Block(width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        return self.head(self.b2(self.b1(x)))


def build_model(width: int = 4) -> nn.Module:
    model = Net(width)
    model.input_shape = (1, width, 6, 6)
    return model
