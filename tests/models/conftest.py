"""Shared fixtures of the model-zoo tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import gpa.models


@pytest.fixture(scope="session")
def meta_model() -> Callable[[str], nn.Module]:
    """Build a zoo entry with default knobs on the meta device, once per session.

    The tests only read these models (forward passes on meta tensors, fx tracing,
    counting), so sharing them is safe and keeps the big backbones cheap.
    """
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            with torch.device("meta"):
                cache[name] = gpa.models.build(name)
        return cache[name]

    return get
