"""Zoo tier: torchvision and timm architectures, analysed with both tracers.

Run by ``.ci/zoo`` (its own virtualenv with torch 2.14.1, torchvision, timm); the
default ``pytest`` run deselects it (``-m "not zoo"``). Every entry must be analysed
by at least one tracer (so by ``tracer="auto"``), and wherever both tracers run they
must give identical per-layer shortest, longest, timestamps and num_paths, except
for the documented fx-side misses of :data:`catalog.KNOWN_DIFFERENCES`, whose
difference is checked to be exactly the one described.
"""

from __future__ import annotations

import pytest
from catalog import ENTRIES, KNOWN_DIFFERENCES, per_layer, run

pytestmark = pytest.mark.zoo


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.spec)
def test_tracers_agree(entry) -> None:
    outcome = run(entry)
    assert outcome.auto is not None, f"{outcome.fx_error} / {outcome.autograd_error}"
    if outcome.fx is None:  # fx cannot trace it: that is what the autograd tracer is for
        assert "cannot trace" in outcome.fx_error
        return
    if outcome.autograd is None:
        pytest.fail(f"autograd tracer failed where fx works: {outcome.autograd_error}")
    if entry.spec in KNOWN_DIFFERENCES:
        fx_layers, autograd_layers = set(outcome.fx.layers), set(outcome.autograd.layers)
        extra = autograd_layers - fx_layers
        assert fx_layers < autograd_layers
        assert extra and all(n.endswith(("attn.qkv", "attn.proj")) for n in extra)
        return
    assert per_layer(outcome.autograd) == per_layer(outcome.fx)


def test_catalog_spans_the_families() -> None:
    families = {e.family for e in ENTRIES}
    wanted = {
        "VGG", "ResNet", "ResNeXt", "Wide ResNet", "DenseNet", "MobileNet v2", "MobileNet v3",
        "EfficientNet", "RegNet", "ShuffleNet", "SqueezeNet", "GoogLeNet", "Inception",
        "ConvNeXt", "ViT", "DeiT", "Swin", "MLP-Mixer", "CSPDarknet", "CSPResNet", "DarkNet",
        "VoVNet", "HRNet", "DLA", "Res2Net",
    }  # fmt: skip
    assert wanted <= families
    assert len(ENTRIES) >= 60
    assert len({e.spec for e in ENTRIES}) == len(ENTRIES)
