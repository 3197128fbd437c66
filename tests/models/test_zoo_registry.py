"""Registry behaviour: names, build, describe, knobs and their errors."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

import gpa.models
from gpa.errors import GpaError
from gpa.models import ZooError, build, describe, names

PUBLIC = [
    "plainnet",
    "resnet",
    "resnet_stopgrad",
    "prn",
    "densenet",
    "sparsenet",
    "csp",
    "vovnet",
    "vovnet99",
    "vovnet99_elan",
    "vovnet99_elan_csp",
    "elan",
    "elan_h",
    "darknet53",
    "cspdarknet53",
    "resnet50_darknet",
    "cspresnet50",
    "resnext50_darknet",
    "cspresnext50",
    "yolo_v3",
    "yolo_prn",
    "yolo_csp",
    "yolo_csp_stopgrad",
    "yolo_elan",
    "yolo_elan_af",
]


def test_names_are_the_public_entries() -> None:
    assert sorted(names()) == sorted(PUBLIC)
    assert len(set(names())) == len(names())


@pytest.mark.parametrize("name", PUBLIC)
def test_factory_is_a_package_attribute_with_defaults(name: str) -> None:
    factory = getattr(importlib.import_module("gpa.models"), name)
    assert callable(factory) and not isinstance(factory, types.ModuleType)
    assert factory is describe(name).factory
    sig = inspect.signature(factory)
    assert all(p.default is not inspect.Parameter.empty for p in sig.parameters.values())
    info = describe(name)
    assert dict(info.knobs) == {k: p.default for k, p in sig.parameters.items()}
    assert info.description and "\n" not in info.description
    assert info.section and info.family
    assert info.summary().startswith(f"{name}(")
    assert factory.__doc__


def test_known_knob_defaults() -> None:
    assert dict(describe("resnet").knobs) == {
        "blocks": 3,
        "bottleneck": False,
        "width": 16,
        "num_classes": 10,
    }
    knobs = describe("csp").knobs
    assert (knobs["base"], knobs["fusion"], knobs["split"]) == ("darknet", "csp", "conv")
    assert describe("prn").knobs["ratio"] == 0.5
    assert describe("sparsenet").knobs["aggregation"] == "concat"
    assert describe("resnet_stopgrad").knobs["where"] == "identity"
    assert describe("vovnet").knobs["elan"] is False
    assert describe("darknet53").input_shape == (1, 3, 256, 256)
    assert describe("plainnet").input_shape == (1, 3, 64, 64)


def test_build_passes_knobs() -> None:
    model = build("plainnet", depth=3, width=8)
    assert len(model.stages[0].blocks) == 3
    assert model.stem.conv.out_channels == 8
    assert model.input_shape == (1, 3, 64, 64)
    assert build("csp", stages=6).input_shape == (1, 3, 128, 128)


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnett'.*did you mean 'resnet'"):
        build("resnett")
    with pytest.raises(ZooError, match="unknown model 'nope'"):
        describe("nope")


def test_unknown_knob_is_named() -> None:
    with pytest.raises(ValueError, match="unknown knob 'depth' for model 'resnet'") as info:
        build("resnet", depth=3)
    assert "blocks" in str(info.value)  # lists the real knobs
    with pytest.raises(ValueError, match="'foo', 'bar'"):
        gpa.models.plainnet(foo=1, bar=2)


@pytest.mark.parametrize(
    ("name", "knobs", "knob"),
    [
        ("plainnet", {"depth": 0}, "depth"),
        ("resnet", {"blocks": 2.5}, "blocks"),
        ("resnet", {"bottleneck": "yes"}, "bottleneck"),
        ("prn", {"ratio": 1.5}, "ratio"),
        ("sparsenet", {"aggregation": "mean"}, "aggregation"),
        ("csp", {"fusion": "middle"}, "fusion"),
        ("csp", {"base": "vgg"}, "base"),
        ("csp", {"split": "half"}, "split"),
        ("resnet_stopgrad", {"where": "loss"}, "where"),
        ("vovnet", {"stages": 2, "osa_per_stage": (1, 2, 3)}, "osa_per_stage"),
        ("elan", {"pairs": True}, "pairs"),
    ],
)
def test_invalid_knob_value_is_named(name: str, knobs: dict, knob: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: knob '{knob}'"):
        build(name, **knobs)


def test_zoo_errors_are_user_errors() -> None:
    with pytest.raises(GpaError):
        build("nope")
    with pytest.raises(GpaError):
        build("resnet", nope=1)


def test_a_registered_entry_is_a_target_without_its_own_import_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An entry a family module registers was listed by ``gpa.models.names()`` but was no
    ``gpa.models`` attribute, so the TARGET ``gpa.models:NAME`` failed (found by a newcomer
    adding a zoo entry): the package reads the registry."""
    from torch import nn

    from gpa.api import analyze_target
    from gpa.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register(description="two convolutions", section="test", input_shape=(1, 3, 8, 8))
    def two_convs(width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.Conv2d(width, 2, 3))

    assert gpa.models.two_convs is two_convs
    report = analyze_target("gpa.models:two_convs", {"width": 5})
    # by hand: the second convolution feeds the loss (1), the first through it (2)
    assert {n: r.shortest for n, r in report.layers.items()} == {"0": 2, "2": 1}
    with pytest.raises(AttributeError, match="no attribute 'not_registered'"):
        gpa.models.not_registered  # noqa: B018


@pytest.mark.parametrize("name", ["dense", "yolo", "blocks", "build"])
def test_an_entry_named_as_a_module_or_function_of_the_package_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """``gpa.models.dense`` is the family module: an entry ``dense`` would be unreachable
    as ``gpa.models:dense`` (found by a review)."""
    from torch import nn

    from gpa.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(RuntimeError, match=f"model '{name}' is named as a module or function"):
        registry.register(description="x", section="test", name=name)(lambda: nn.Linear(2, 2))
