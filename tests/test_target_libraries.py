"""Library targets (gpa/target.py): ``torchvision:NAME``, ``timm:NAME``, Ultralytics model
YAMLs (``yolov8n.yaml``, ``ultralytics:NAME``, a path) and ``transformers:NAME``.

The core tier has none of these libraries: what does not need them (parsing, the error
when a library is missing) runs everywhere; what does is skipped with the reason when
the library is missing, and tests/zoo/test_zoo_targets.py exercises every library for
real in the zoo tier, which installs them.
"""

from __future__ import annotations

import sys

import pytest

from gpa.errors import TargetError
from gpa.target import LIBRARIES, _library_spec, library_inputs_text, load_target


def _error(spec: str, kwargs: dict | None = None) -> str:
    with pytest.raises(TargetError) as info:
        load_target(spec, kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("torchvision:resnet50", ("torchvision", "resnet50")),
        ("timm:resnet50", ("timm", "resnet50")),
        ("timm:resnet50.a1_in1k", ("timm", "resnet50.a1_in1k")),
        ("transformers:bert", ("transformers", "bert")),
        ("transformers:GPT2LMHeadModel", ("transformers", "GPT2LMHeadModel")),
        ("ultralytics:yolov8n", ("ultralytics", "yolov8n")),
        ("ultralytics:yolov8n.yaml", ("ultralytics", "yolov8n.yaml")),
        ("yolov8n.yaml", ("ultralytics", "yolov8n.yaml")),
        ("nets/custom.yml", ("ultralytics", "nets/custom.yml")),
        ("torchvision.models:resnet50", None),  # an import spec, as before
        ("nets/mine.py:build", None),
        ("gpa.models:plainnet", None),
    ],
)
def test_library_targets_are_recognised(spec: str, parsed: tuple[str, str] | None) -> None:
    assert _library_spec(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "library"),
    [
        ("torchvision:resnet50", "torchvision"),
        ("timm:resnet50", "timm"),
        ("transformers:bert", "transformers"),
        ("ultralytics:yolov8n", "ultralytics"),
        ("yolov8n.yaml", "ultralytics"),
    ],
)
def test_a_missing_library_is_named(
    spec: str, library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, library, None)  # import fails as if not installed
    message = _error(spec)
    assert f"names a model of {library}, which is not installed" in message
    assert f"pip install {library}" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_library_target_needs_a_name(library: str) -> None:
    assert f"give {library}:NAME" in _error(f"{library}:")


def test_library_inputs_are_documented() -> None:
    text = library_inputs_text()
    assert "1 image (2 where batch norm runs in train mode)" in text
    assert "640x640" in text and "16 token ids" in text


# ------------------------------------------------------------ with the library installed


def test_torchvision_names() -> None:
    pytest.importorskip("torchvision", reason="torchvision is not installed (the zoo tier has it)")
    loaded = load_target("torchvision:resnet18")
    assert type(loaded.model).__name__ == "ResNet"
    assert (loaded.name, loaded.input_shape, loaded.example_inputs) == (
        "torchvision:resnet18",
        [(2, 3, 224, 224)],
        None,
    )
    assert type(load_target("torchvision:models.resnet18").model).__name__ == "ResNet"
    assert "did you mean 'torchvision:resnet18'" in _error("torchvision:resnet19")
    assert "drop -k weights" in _error("torchvision:resnet18", {"weights": "DEFAULT"})


def test_timm_names() -> None:
    pytest.importorskip("timm", reason="timm is not installed (the zoo tier has it)")
    loaded = load_target("timm:resnet18", {"num_classes": 10})
    assert loaded.model.fc.out_features == 10
    assert loaded.input_shape == [(2, 3, 224, 224)]
    assert "did you mean 'timm:resnet18'" in _error("timm:resnet19")
