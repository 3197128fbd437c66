"""Report serialisation: to_dict / to_json layout, byte-identical JSON, the text table.

Every expected value below is derived by hand in the comment next to it, from the
contract (docs/semantics.md); none was copied from gpa's output. The conventions and the
helpers (``expect``, ``expect_network``, ``at`` ...) are in tests/semantics.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpa
from tests.core.test_paths import DenseBlock, ResNet
from tests.frontends.test_tracing import NoGradNet
from tests.semantics import IMG

# ======================================================================================
# Report serialisation


TOP_KEYS = {"gpa_version", "model", "tracer", "inputs", "options", "network", "layers", "notes"}
NETWORK_KEYS = {
    "layers",
    "max_shortest",
    "min_shortest",
    "mean_shortest",
    "longest",
    "unreachable",
    "params",
    "flops",
    "count_convention",
}
LAYER_KEYS = {
    "name",
    "type",
    "calls",
    "shortest",
    "longest",
    "timestamps",
    "num_paths",
    "path_histogram",
    "sources",
    "params",
    "flops",
}


def test_to_dict_and_json():
    report = gpa.analyze(NoGradNet("no_grad"), torch.randn(IMG))
    d = report.to_dict()
    assert set(d) == TOP_KEYS
    data = json.loads(report.to_json())
    assert set(data) == TOP_KEYS
    assert data["gpa_version"] == gpa.__version__
    assert data["inputs"] == [{"shape": list(IMG), "dtype": "float32"}]
    assert data["options"] == {
        "outputs": None,
        "layer_types": None,
        "leaf_modules": None,
        "train": True,
        "tracer": "auto",
        "channels": False,
        "count_convention": "torch",
    }
    assert set(data["network"]) == NETWORK_KEYS
    assert [layer["name"] for layer in data["layers"]] == ["c1", "c4", "c2", "c3", "fc"]
    for layer in data["layers"]:
        assert set(layer) == LAYER_KEYS
    by_name = {layer["name"]: layer for layer in data["layers"]}
    c1 = dict(by_name["c1"])
    counted = {k: c1.pop(k) for k in ("params", "flops")}
    assert counted["params"] == 3 * 4 * 3 * 3 + 4  # Conv2d(3, 4, 3): weight and bias
    # values as derived in test_no_grad_block
    assert c1 == {
        "name": "c1",
        "type": "Conv2d",
        "calls": 1,
        "shortest": 3,
        "longest": 3,
        "timestamps": [3],
        "num_paths": 1,
        "path_histogram": {"3": 1},
        "sources": ["c3"],
    }
    assert by_name["c2"]["shortest"] is None
    assert by_name["c2"]["num_paths"] == 0
    assert by_name["c2"]["path_histogram"] == {}
    assert by_name["c2"]["sources"] == []
    assert data["network"]["layers"] == 5
    assert sorted(data["network"]["unreachable"]) == ["c2", "c4"]
    assert data["network"]["max_shortest"] == 3
    # to_dict and to_json carry the same content
    assert json.loads(json.dumps(d)) == data


def test_json_byte_identical_across_runs():
    first = gpa.analyze(ResNet(2), torch.randn(IMG)).to_json()
    again = gpa.analyze(ResNet(2), torch.randn(IMG)).to_json()
    model = DenseBlock()
    third = gpa.analyze(model, input_shape=IMG).to_json()
    fourth = gpa.analyze(model, input_shape=IMG).to_json()
    assert first == again
    assert third == fourth
    assert json.loads(first)["layers"][0]["path_histogram"] == {"2": 1, "4": 2, "6": 1}


_JSON_SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
import gpa
from tests.core.test_paths import DenseBlock, ResNet, Shared
from tests.frontends.test_tracing import NoGradNet
from tests.semantics import IMG
for model in (ResNet(2), DenseBlock(), NoGradNet("no_grad"), Shared()):
    print(gpa.analyze(model, torch.randn(IMG)).to_json())
"""


@pytest.mark.slow  # subprocesses
def test_json_byte_identical_across_processes():
    # separate interpreters with different string-hash seeds: no set/dict-order leaks
    script = _JSON_SCRIPT.format(root=str(Path(__file__).resolve().parents[2]))
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    assert outs[0].count('"gpa_version"') == 4


def test_str_is_a_table_of_layers():
    text = str(gpa.analyze(DenseBlock(), torch.randn(IMG)))
    for name in ("stem", "h1", "h2", "h3", "trans", "fc"):
        assert name in text


# ======================================================================================
# Pickling: a report sent to another process (a pool of analyses) or cached


class _TwoHeads(torch.nn.Module):
    """``a`` feeds ``b`` (output ``y``) and, through its channels 0–1, ``c`` (output ``z``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 1)
        self.b = torch.nn.Conv2d(4, 4, 1)
        self.c = torch.nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.a(x)
        return {"y": self.b(h), "z": self.c(h[:, :2])}


@pytest.mark.parametrize(
    ("tracer", "channels"),
    [("fx", False), ("fx", True), ("export", False), ("export", True), ("autograd", False)],
)
def test_a_report_pickles_with_its_paths_and_segments(tracer: str, channels: bool) -> None:
    """By hand: b and c are fed by the loss (1), a by b and c (2); a's channels 0–1 reach b
    and c, 2–3 b alone (two segments). The report held its lazily read histograms and
    paths in closures, which pickle refused; now a report comes back as it was."""
    import pickle

    report = gpa.analyze(_TwoHeads(), input_shape=(1, 3, 2, 2), tracer=tracer, channels=channels)
    back = pickle.loads(pickle.dumps(report))
    assert back.to_json() == report.to_json()
    assert str(back) == str(report)
    a = back.layers["a"]
    assert (a.shortest, a.longest, a.path_histogram, a.sources) == (2, 2, {2: 2}, ("b", "c"))
    assert [step.layer for step in a.shortest_path()] == ["a", "b"]
    assert [(s.name, s.shortest) for s in back.layers.values() if s.name != "a"] == [
        ("b", 1),
        ("c", 1),
    ]
    if channels:
        assert [(seg.start, seg.stop) for seg in a.segments] == [(0, 2), (2, 4)]
