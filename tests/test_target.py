"""Tests of gpa.load: TARGET parsing, finding and building the model, inputs, errors."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import gpa.api
from gpa.cli import main
from gpa.cli.options import ParseError, parse_kv, parse_shape
from gpa.errors import GpaError, TargetError
from gpa.frontends.modules import resolve_layer_types, resolve_leaf_modules, resolve_module_class
from gpa.target import DEFAULT_NAMES, load_target

DATA = Path(__file__).parent / "data"


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def load_error(spec: str, kwargs: dict | None = None) -> str:
    with pytest.raises(TargetError) as info:
        load_target(spec, kwargs)
    return str(info.value)


# ----------------------------------------------------------------- parse_shape


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("1,3,224,224", (1, 3, 224, 224)),
        (" 1, 3, 8 ,8 ", (1, 3, 8, 8)),
        ("(2, 5)", (2, 5)),
        ("[4]", (4,)),
        ("8,", (8,)),
        ("1x3x32x32", (1, 3, 32, 32)),
    ],
)
def test_parse_shape_accepts_common_spellings(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected comma-separated sizes"),
        ("1,a,3", "'a' is not a whole number"),
        ("1,,3", "'' is not a whole number"),
        ("1,0,3", "sizes must be positive, got 0"),
        ("1,-3", "'-3' is not a whole number"),
        ("1.5,2", "'1.5' is not a whole number"),
    ],
)
def test_parse_shape_rejects_bad_text(text: str, fragment: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_shape(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, GpaError) and isinstance(info.value, ValueError)


@pytest.mark.slow  # hypothesis
@given(st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=6))
def test_parse_shape_round_trips(dims: list[int]) -> None:
    assert parse_shape(",".join(map(str, dims))) == tuple(dims)


# -------------------------------------------------------------------- parse_kv


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("depth=18", ("depth", 18)),
        ("ratio=0.25", ("ratio", 0.25)),
        ("pretrained=False", ("pretrained", False)),
        ("norm=None", ("norm", None)),
        # as TOML, YAML and JSON write them (found by a new user: "false" was a string,
        # which is true); a quoted one stays a string
        ("pretrained=false", ("pretrained", False)),
        ("fused=true", ("fused", True)),
        ("norm=null", ("norm", None)),
        ("norm=none", ("norm", "none")),  # (a string some libraries take)
        ("name='false'", ("name", "false")),
        ("stages=(3, 4, 6, 3)", ("stages", (3, 4, 6, 3))),
        ("widths=[8,16]", ("widths", [8, 16])),
        ("act=silu", ("act", "silu")),
        ("act='relu'", ("act", "relu")),
        ("expr=a=b", ("expr", "a=b")),
        ("empty=", ("empty", "")),
        (" depth = 3 ", ("depth", 3)),
    ],
)
def test_parse_kv_reads_literals_else_strings(text: str, expected: tuple) -> None:
    assert parse_kv(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("depth", "expected key=value"), ("1x=2", "not a valid keyword-argument name")],
)
def test_parse_kv_rejects_bad_text(text: str, fragment: str) -> None:
    with pytest.raises(ParseError, match=fragment):
        parse_kv(text)


def test_default_name_is_first_of_model_build_get_create(tmp_path: Path) -> None:
    assert DEFAULT_NAMES == ("model", "build_model", "get_model", "create_model")
    path = write(
        tmp_path / "several.py",
        """
        from torch import nn

        def create_model():
            return nn.Linear(1, 1)

        def get_model():
            return nn.Linear(2, 2)

        def build_model():
            return nn.Linear(3, 3)
        """,
    )
    loaded = load_target(str(path))
    assert loaded.model.in_features == 3
    assert loaded.name == f"{path}:build_model"


def test_model_may_be_an_instance_or_zero_argument_callable(tmp_path: Path) -> None:
    instance = write(tmp_path / "inst.py", "from torch import nn\nmodel = nn.Linear(5, 1)\n")
    assert load_target(str(instance)).model.in_features == 5
    factory = write(
        tmp_path / "fact.py",
        "from torch import nn\ndef model():\n    return nn.Linear(6, 1)\n",
    )
    assert load_target(str(factory)).model.in_features == 6


def test_file_with_attr_and_factory_kwargs() -> None:
    loaded = load_target(f"{DATA / 'factory.py'}:build", {"depth": 3, "width": 5})
    assert isinstance(loaded.model, nn.Module)
    assert len(loaded.model.layers) == 3
    assert loaded.model.layers[0].in_features == 5
    assert loaded.name == f"{DATA / 'factory.py'}:build"


def test_attr_may_be_a_module_subclass_taking_kwargs() -> None:
    loaded = load_target(f"{DATA / 'chain3.py'}:Chain3", {"width": 2})
    assert type(loaded.model).__name__ == "Chain3"
    assert loaded.model.conv1.out_channels == 2


def test_attr_may_be_a_module_instance() -> None:
    loaded = load_target(f"{DATA / 'factory.py'}:instance")
    assert len(loaded.model.layers) == 1


def test_relative_path_keeps_its_spelling_in_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    assert load_target("chain3.py").name == "chain3.py:build_model"
    assert load_target("chain3.py:Chain3").name == "chain3.py:Chain3"


# ----------------------------------------------------------------- inputs


def test_input_shape_from_file() -> None:
    loaded = load_target(str(DATA / "chain3.py"))
    assert loaded.input_shape == [(1, 3, 8, 8)]
    assert loaded.example_inputs is None


def test_example_inputs_callable_and_tuple() -> None:
    heads = load_target(str(DATA / "two_heads.py"))
    assert heads.input_shape is None
    assert [tuple(t.shape) for t in heads.example_inputs] == [(2, 4)]
    pair = load_target(str(DATA / "pair.py"))
    assert type(pair.model).__name__ == "Pair"  # `model = Pair`: a class is instantiated
    assert [tuple(t.shape) for t in pair.example_inputs] == [(1, 3), (1, 5)]


def test_example_inputs_win_over_input_shape(tmp_path: Path) -> None:
    path = write(
        tmp_path / "both.py",
        """
        import torch
        from torch import nn
        model = nn.Linear(3, 1)
        input_shape = [(9, 3)]
        example_inputs = torch.ones(2, 3)
        """,
    )
    loaded = load_target(str(path))
    assert loaded.input_shape is None
    assert torch.equal(loaded.example_inputs[0], torch.ones(2, 3))


def test_list_of_input_shapes(tmp_path: Path) -> None:
    path = write(
        tmp_path / "shapes.py",
        "from torch import nn\nmodel = nn.Bilinear(2, 3, 1)\ninput_shape = [(1, 2), [1, 3]]\n",
    )
    assert load_target(str(path)).input_shape == [(1, 2), (1, 3)]


def test_model_attribute_input_shape_is_the_fallback() -> None:
    loaded = load_target(str(DATA / "blocks.py"))
    assert loaded.input_shape == [(1, 4, 6, 6)]
    assert load_target(str(DATA / "no_inputs.py")).input_shape is None


@pytest.mark.parametrize(
    "array", ["torch.zeros(2, 4)", "(torch.zeros(2, 4),)", '{"x": torch.zeros(2, 4)}']
)
def test_a_lightning_example_input_array_is_the_last_fallback(tmp_path: Path, array: str) -> None:
    """PyTorch Lightning's modules keep their example inputs in ``example_input_array``; the
    CLI analysed them without inputs (found by a new-user review with Lightning). By
    hand: a -> b, shortest 2 and 1."""
    path = write(
        tmp_path / "lit.py",
        f"""
        import torch
        from torch import nn

        class Lit(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
                self.example_input_array = {array}

            def forward(self, x):
                return self.b(self.a(x))

        model = Lit()
        """,
    )
    loaded = load_target(str(path))
    assert [tuple(t.shape) for t in loaded.example_inputs] == [(2, 4)]
    report = gpa.api.analyze_target(str(path))
    assert {n: r.shortest for n, r in report.layers.items()} == {"a": 2, "b": 1}
    assert report.inputs[0]["shape"] == [2, 4]


class _Declared(nn.Module):
    """a -> b; the first sample of a batch of one goes through ``b`` alone (so the
    inputs used show in the paths)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x)) if x.shape[0] > 1 else self.b(x)


@pytest.mark.parametrize(
    "declared",
    ["input_shape", "example_input_array", "example_input_array tuple", "example_input_array dict"],
)
@pytest.mark.parametrize("tracer", ["auto", "export", "autograd"])
def test_the_python_api_takes_the_inputs_a_model_declares(declared: str, tracer: str) -> None:
    """Found by a new user with Lightning: ``gpa analyze lit.py:Lit`` took the module's
    ``example_input_array``, ``gpa.analyze(lit)`` did not (export and autograd refused it
    for want of inputs; fx ran without shapes). Every surface now takes the inputs a model
    declares. By hand, for a batch of 2: a -> b, shortest 2 and 1; a's FLOPs 2·(2·4·4)
    (2 rows of 4×4 multiply-accumulates, two operations each)."""
    model = _Declared()
    if declared == "input_shape":
        model.input_shape = (2, 4)
    elif declared.endswith("tuple"):
        model.example_input_array = (torch.zeros(2, 4),)
    elif declared.endswith("dict"):
        model.example_input_array = {"x": torch.zeros(2, 4)}
    else:
        model.example_input_array = torch.zeros(2, 4)
    report = gpa.analyze(model, tracer=tracer)
    assert {n: r.shortest for n, r in report.layers.items()} == {"a": 2, "b": 1}
    assert report.inputs[0]["shape"] == [2, 4]
    assert report.layers["a"].flops == 2 * (2 * 4 * 4)
    assert gpa.count(model).flops["a"] == 2 * (2 * 4 * 4)  # (it took input_shape alone)
    # given inputs come first: a batch of one goes through b alone
    given = gpa.analyze(model, torch.zeros(1, 4), tracer=tracer)
    assert {n: r.shortest for n, r in given.layers.items() if r.calls} == {"b": 1}


def test_an_attribute_named_input_shape_that_is_no_shape_is_no_input() -> None:
    """A model whose ``input_shape`` means something else to it is analysed as before:
    without inputs (fx: shapes not propagated, a note says so); its
    ``example_input_array`` is the next declaration, as for ``gpa.count``, which says what
    is wrong with an ``input_shape`` when it has no other. By hand: a -> b (2, 1)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model.input_shape = "NCHW"
    report = gpa.analyze(model, tracer="fx")
    assert not report.inputs
    assert any(note.startswith("no example inputs") for note in report.notes)
    with pytest.raises(GpaError, match="input_shape attribute .* got 'NCHW'"):
        gpa.count(model)
    model.example_input_array = torch.zeros(3, 4)
    for report in (gpa.analyze(model, tracer="autograd"), gpa.analyze(model)):
        assert report.inputs[0]["shape"] == [3, 4]
        assert {n: r.shortest for n, r in report.layers.items()} == {"0": 2, "1": 1}
    assert gpa.count(model).flops["0"] == 2 * (3 * 4 * 4)


def test_inputs_a_model_declares_that_do_not_fit_it_are_said() -> None:
    """An ``input_shape`` meaning something else (an image's size, (28, 28), before a
    ``Flatten`` and a ``Linear(784, ·)``) does not fit the model: found by a review, the
    analysis raised the model's error with no word of where the inputs came from. Where the
    tracer needs no inputs, gpa analyses without them, as before the declaration was read,
    and a note says why; else the error names the declaration. A property that raises
    declares nothing. By hand: 1 (784 -> 16) -> 2 (16 -> 2): shortest 2, 1."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.Linear(16, 2))
    model.input_shape = (28, 28)
    report = gpa.analyze(model)
    assert report.tracer == "fx" and not report.inputs
    assert {n: r.shortest for n, r in report.layers.items()} == {"1": 2, "2": 1}
    assert report.notes[0].startswith(
        "the inputs the model declares (its input_shape attribute, (28, 28)) do not fit it"
    )
    with pytest.raises(GpaError, match=r"the inputs the model declares: its input_shape"):
        gpa.analyze(model, tracer="autograd")

    class Unready(nn.Sequential):
        @property
        def input_shape(self):
            raise RuntimeError("set by setup()")

    report = gpa.analyze(Unready(nn.Linear(4, 4), nn.Linear(4, 2)), tracer="fx")
    assert not report.inputs and {r.shortest for r in report.layers.values()} == {1, 2}


@pytest.mark.parametrize("where", ["example_inputs", "model.example_input_array"])
def test_a_target_gives_forward_arguments_by_name(tmp_path: Path, where: str) -> None:
    """A dict of forward's arguments by name (a tokenizer's output) is bound to forward's
    positions, the arguments between at their defaults, on the command line too. By hand:
    a -> b, shortest 2 and 1; the mask, given, multiplies a's output."""
    path = write(
        tmp_path / "named.py",
        f"""
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

            def forward(self, x, scale=1.0, mask=None):
                y = self.a(x) * scale
                return self.b(y if mask is None else y * mask)

        model = Net()
        {where} = {{"x": torch.zeros(2, 4), "mask": torch.ones(2, 4)}}
        """,
    )
    loaded = load_target(str(path))
    assert [type(v).__name__ for v in loaded.example_inputs] == ["Tensor", "float", "Tensor"]
    report = gpa.api.analyze_target(str(path))
    assert {n: r.shortest for n, r in report.layers.items()} == {"a": 2, "b": 1}
    assert report.inputs[1] == {"value": "1.0"}
    result = CliRunner().invoke(main, ["analyze", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["inputs"][1] == {"value": "1.0"}


def test_a_target_naming_an_argument_forward_takes_by_keyword_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path / "keyword.py",
        """
        import torch
        from torch import nn

        class Net(nn.Linear):
            def forward(self, x, *, scale=1.0):
                return super().forward(x) * scale

        model = Net(4, 2)
        example_inputs = {"x": torch.zeros(2, 4), "scale": 2.0}
        """,
    )
    with pytest.raises(TargetError, match="example_inputs in .*'scale'.*only by keyword"):
        load_target(str(path))


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("input_shape = 'big'", "input_shape in"),
        ("input_shape = (1.5, 2)", "must be a tuple of ints"),
        ("example_inputs = [1, 2]", "must be a tensor, a tuple of tensors"),
        ("def example_inputs():\n    raise OSError('no data here')", "no data here"),
    ],
)
def test_bad_inputs_definitions(tmp_path: Path, line: str, fragment: str) -> None:
    path = write(
        tmp_path / "bad_inputs.py", f"from torch import nn\nmodel = nn.Linear(2, 2)\n{line}\n"
    )
    assert fragment in load_error(str(path))


# ----------------------------------------------------------------- errors


def test_missing_file() -> None:
    message = load_error("nets/does_not_exist.py:build")
    assert message.startswith("file not found: nets/does_not_exist.py")
    assert "check the path" in message


def test_directory_is_not_a_target() -> None:
    assert "is a directory" in load_error(str(DATA))


def test_exception_while_importing_shows_the_files_own_lines() -> None:
    message = load_error(str(DATA / "import_error.py"))
    assert "import_error.py failed" in message
    assert 'import_error.py", line 6, in <module>' in message
    assert 'MAX_DEPTH = LIMITS["detph"]' in message
    assert message.rstrip().endswith("KeyError: 'detph'")
    assert "importlib" not in message and "gpa/load.py" not in message


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.py", "from torch import nn\n\ndef build_model(:\n    pass\n")
    message = load_error(str(path))
    assert 'broken.py", line 3' in message
    assert "def build_model(:" in message
    assert "SyntaxError" in message


def test_failed_import_leaves_no_module_behind(tmp_path: Path) -> None:
    before = set(sys.modules)
    load_error(str(DATA / "import_error.py"))
    assert not [m for m in set(sys.modules) - before if "import_error" in m]


def test_no_model_found_lists_names_looked_for_and_candidates() -> None:
    message = load_error(str(DATA / "no_model.py"))
    assert "no model found in" in message
    assert "looked for model, build_model, get_model, create_model" in message
    assert "nn.Module subclasses: TinyNet" in message
    assert "functions: make_net" in message
    assert "no_model.py:NAME" in message


def test_missing_attr_lists_what_the_file_defines() -> None:
    message = load_error(f"{DATA / 'factory.py'}:buld")
    assert "has no attribute 'buld' (did you mean 'build'?)" in message
    assert "nn.Module instances: instance" in message
    assert "nn.Module subclasses: Stack" in message
    assert "functions: build, returns_int" in message
    assert "example_inputs" not in message  # inputs are not model candidates


def test_factory_that_raises_shows_its_traceback_lines() -> None:
    message = load_error(str(DATA / "factory_raises.py"))
    assert "build_model() from" in message and "raised an exception" in message
    assert 'factory_raises.py", line 13, in build_model' in message
    assert 'factory_raises.py", line 8, in _check' in message
    assert message.rstrip().endswith("ValueError: width must be a multiple of 8, got 12")


def test_factory_failing_inside_torch_shows_only_user_frames(tmp_path: Path) -> None:
    path = write(
        tmp_path / "neg.py",
        "from torch import nn\n\ndef build_model(width=-4):\n    return nn.Linear(width, 2)\n",
    )
    message = load_error(str(path))
    assert 'neg.py", line 4, in build_model' in message
    assert "torch/nn" not in message and "site-packages" not in message
    assert "RuntimeError" in message


def test_factory_kwargs_it_does_not_accept() -> None:
    message = load_error(f"{DATA / 'factory.py'}:build", {"deep": 3})
    assert "does not accept 'deep'" in message
    assert "it accepts: depth, width, act" in message


def test_factory_parameters_without_value(tmp_path: Path) -> None:
    path = write(
        tmp_path / "req.py",
        "from torch import nn\n\ndef build(depth, *, width):\n    return nn.Linear(width, depth)\n",
    )
    message = load_error(f"{path}:build")
    assert "requires depth, width: give -k depth=VALUE -k width=VALUE" in message
    assert "requires width: give -k width=VALUE" in load_error(f"{path}:build", {"depth": 2})
    assert load_target(f"{path}:build", {"depth": 2, "width": 3}).model.weight.shape == (2, 3)


def test_factory_with_var_keyword_takes_any_kwargs(tmp_path: Path) -> None:
    path = write(
        tmp_path / "anykw.py",
        "from torch import nn\n\ndef build(**cfg):\n    return nn.Linear(cfg['n'], 1)\n",
    )
    assert load_target(f"{path}:build", {"n": 7}).model.in_features == 7


def test_kwargs_for_an_instance_are_an_error() -> None:
    message = load_error(f"{DATA / 'factory.py'}:instance", {"depth": 3})
    assert "is an nn.Module instance" in message and "depth=3" in message


def test_factory_returning_something_else() -> None:
    message = load_error(str(DATA / "not_module.py"))
    assert "build_model in" in message
    assert "returned builtins.dict, not a torch.nn.Module" in message
    message = load_error(f"{DATA / 'factory.py'}:not_a_model")
    assert "is a value of type int" in message


def test_unimportable_module_spec() -> None:
    message = load_error("no_such_pkg_for_gpa_tests.models:build")
    assert "cannot import module 'no_such_pkg_for_gpa_tests.models'" in message
    assert "no module named 'no_such_pkg_for_gpa_tests'" in message


def test_module_spec_whose_import_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "gpa_fixture_explodes.py", "import torch\nraise ImportError('needs cuda')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    message = load_error("gpa_fixture_explodes:build")
    assert "importing module 'gpa_fixture_explodes'" in message
    assert 'gpa_fixture_explodes.py", line 2, in <module>' in message
    assert "ImportError: needs cuda" in message


# ---------------------------------------------------------- import specs


def test_import_spec_of_a_torch_class_with_kwargs() -> None:
    loaded = load_target("torch.nn:Linear", {"in_features": 3, "out_features": 2})
    assert isinstance(loaded.model, nn.Linear)
    assert loaded.model.weight.shape == (2, 3)
    assert loaded.name == "torch.nn:Linear"
    assert loaded.input_shape is None and loaded.example_inputs is None


def test_import_spec_uses_model_input_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(DATA))
    loaded = load_target("gpa_fixture_module:build", {"width": 7})
    assert loaded.input_shape == [(1, 7)]
    assert loaded.name == "gpa_fixture_module:build"


def test_import_spec_finds_modules_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path / "gpa_fixture_cwd.py",
        "from torch import nn\n\ndef build():\n    return nn.Linear(4, 4)\n",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "gpa_fixture_cwd", raising=False)
    assert load_target("gpa_fixture_cwd:build").model.in_features == 4
    assert str(tmp_path) not in sys.path


def test_import_spec_missing_attr() -> None:
    message = load_error("torch.nn:Conv9d")
    assert "torch.nn has no attribute 'Conv9d'" in message
    assert "did you mean" in message


# ---------------------------------------------------- import hygiene


def test_sibling_imports_work_and_leave_sys_modules_and_path_clean() -> None:
    path_before = list(sys.path)
    loaded = load_target(str(DATA / "siblings" / "net.py"))
    assert [type(m).__name__ for m in loaded.model] == ["Sequential", "Sequential"]
    assert loaded.input_shape == [(1, 4)]
    assert sys.path == path_before
    assert "gpa_fixture_blocks" not in sys.modules
    assert "net" not in sys.modules


def test_target_file_is_not_registered_under_its_plain_name(tmp_path: Path) -> None:
    path = write(tmp_path / "json.py", "from torch import nn\nmodel = nn.Linear(1, 1)\n")
    import json

    load_target(str(path))
    assert sys.modules["json"] is json  # a user file called json.py shadows nothing
    registered = [m for m in sys.modules if m.startswith("_gpa_target_json_")]
    assert len(registered) == 1


def test_two_targets_with_same_named_siblings_stay_apart(tmp_path: Path) -> None:
    for width, folder in ((3, "a"), (5, "b")):
        write(
            tmp_path / folder / "blocks.py",
            f"from torch import nn\n\ndef block():\n    return nn.Linear({width}, 1)\n",
        )
        write(tmp_path / folder / "net.py", "from blocks import block\n\nmodel = block\n")
    first = load_target(str(tmp_path / "a" / "net.py"))
    second = load_target(str(tmp_path / "b" / "net.py"))
    assert (first.model.in_features, second.model.in_features) == (3, 5)


def test_sibling_packages_are_forgotten_but_earlier_imports_are_kept(tmp_path: Path) -> None:
    write(tmp_path / "gpa_fixture_pkg" / "__init__.py", "")
    write(
        tmp_path / "gpa_fixture_pkg" / "layers.py",
        "from torch import nn\n\ndef make():\n    return nn.Linear(2, 2)\n",
    )
    write(
        tmp_path / "net.py",
        """
        import gpa.render.text
        from gpa_fixture_pkg.layers import make
        model = make
        """,
    )
    format_module = importlib.import_module("gpa.render.text")  # imported before the target
    assert isinstance(load_target(str(tmp_path / "net.py")).model, nn.Linear)
    assert not [m for m in sys.modules if m.startswith("gpa_fixture_pkg")]
    assert sys.modules["gpa.render.text"] is format_module  # gpa was imported before: untouched


def test_dataclasses_work_in_target_files(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cfg.py",
        """
        from __future__ import annotations
        from dataclasses import dataclass
        from torch import nn

        @dataclass
        class Config:
            width: int = 3

        def build_model(width: int = 3):
            return nn.Linear(Config(width).width, 1)
        """,
    )
    assert load_target(str(path), {"width": 6}).model.in_features == 6


def test_main_guard_does_not_run(tmp_path: Path) -> None:
    path = write(
        tmp_path / "script.py",
        """
        from torch import nn
        model = nn.Linear(1, 1)
        if __name__ == "__main__":
            raise SystemExit("the script body ran")
        """,
    )
    assert isinstance(load_target(str(path)).model, nn.Linear)


# ---------------------------------------------------- class resolution


def test_resolve_torch_nn_names_and_dotted_paths() -> None:
    assert resolve_module_class("Conv2d") is nn.Conv2d
    assert resolve_module_class("torch.nn.Linear") is nn.Linear
    assert resolve_module_class("torch.nn.modules.conv.Conv1d") is nn.Conv1d
    assert resolve_layer_types(["Linear", "LSTM"]) == [nn.Linear, nn.LSTM]
    # as code spells it (found by a surface audit: refused where both forms above worked)
    assert resolve_module_class("nn.Conv2d") is nn.Conv2d


def test_resolve_classes_used_in_the_model() -> None:
    model = load_target(str(DATA / "blocks.py")).model
    block = resolve_module_class("Block", model)
    assert block is type(model.b1)
    assert resolve_leaf_modules(["Block", "b2.a", "Conv2d"], model) == [block, "b2.a", nn.Conv2d]


def test_resolve_errors() -> None:
    with pytest.raises(TargetError, match="unknown module class 'Conv9d'"):
        resolve_module_class("Conv9d")
    with pytest.raises(TargetError, match="'torch.Tensor' is not an nn.Module subclass"):
        resolve_module_class("torch.Tensor")
    model = load_target(str(DATA / "blocks.py")).model
    with pytest.raises(TargetError, match="not the name of a submodule") as info:
        resolve_leaf_modules(["b3.a"], model)
    assert "Block" in str(info.value)  # the hint lists the model's own classes


def test_labels_keep_the_settings(tmp_path) -> None:
    """Issue 15 §6: a zoo model is labelled with its entry name, not its class (ZooNet);
    a factory whose settings choose the architecture (timm's create_model with
    model_name=…, which records it in pretrained_cfg) is labelled with it."""
    import gpa
    import gpa.models

    m = gpa.models.build("resnet", blocks=2)
    assert gpa.analyze(m, input_shape=m.input_shape).model == "resnet"
    (tmp_path / "factory.py").write_text(
        "import torch.nn as nn\n"
        "def create(model_name='small'):\n"
        "    m = nn.Sequential(nn.Linear(2, 2))\n"
        "    m.pretrained_cfg = {'architecture': model_name}\n"
        "    return m\n"
        "input_shape = (1, 2)\n"
    )
    target = f"{tmp_path / 'factory.py'}:create"
    assert load_target(target, {"model_name": "wide"}).name == f"{target} (wide)"
    assert load_target(target).name == target  # no settings: the target names it


def test_an_example_input_array_that_raises_is_no_input(tmp_path: Path) -> None:
    """Lightning's property raises when nothing was set: an internal error before (found
    by an adversarial review); the model is loaded without inputs."""
    path = write(
        tmp_path / "lit.py",
        """
        from torch import nn

        class Lit(nn.Linear):
            @property
            def example_input_array(self):
                raise RuntimeError("not set")

        model = Lit(4, 2)
        """,
    )
    loaded = load_target(str(path))
    assert loaded.example_inputs is None and loaded.input_shape is None


def test_a_lightning_dict_forward_takes_by_keyword_is_no_input_not_an_error(tmp_path: Path) -> None:
    """Lightning calls ``forward(**example_input_array)``: a keyword-only name is fine there.
    gpa cannot pass it, and this last fallback then gives no inputs: the options' inputs
    are used (found by a review: the target was refused even with --input-shape)."""
    path = write(
        tmp_path / "lit_kw.py",
        """
        import torch
        from torch import nn

        class Lit(nn.Linear):
            def __init__(self):
                super().__init__(3, 2)
                self.example_input_array = {"x": torch.zeros(1, 3), "scale": 2.0}

            def forward(self, x, *, scale=1.0):
                return super().forward(x) * scale

        model = Lit()
        """,
    )
    assert load_target(str(path)).example_inputs is None
    report = gpa.api.analyze_target(str(path), options=gpa.AnalysisOptions(input_shape=(1, 3)))
    assert report.inputs == [{"shape": [1, 3], "dtype": "float32"}]


def test_a_target_tuple_may_hold_python_values_beside_tensors(tmp_path: Path) -> None:
    """As gpa.analyze takes them (a None for an optional argument), where a dict of the same
    was taken and the tuple refused (found by a review). A tuple of numbers alone is a
    shape written where tensors were meant: still refused."""
    path = write(
        tmp_path / "gaps.py",
        """
        import torch
        from torch import nn

        class Net(nn.Linear):
            def forward(self, x, mask=None, scale=1.0):
                return super().forward(x) * scale

        model = Net(4, 2)
        example_inputs = (torch.zeros(1, 4), None, 2.0)
        """,
    )
    assert load_target(str(path)).example_inputs[1:] == (None, 2.0)
    shape = write(
        tmp_path / "shape.py",
        "from torch import nn\nmodel = nn.Linear(4, 2)\nexample_inputs = (1, 4)\n",
    )
    with pytest.raises(TargetError, match="must be a tensor, a tuple of tensors"):
        load_target(str(shape))


def test_an_error_on_inputs_gpa_chose_says_so(monkeypatch) -> None:
    """Found by a review: an analysis failing on the inputs gpa chose for a library model
    said nothing of where they came from (the note is on the report, which an error has
    not). The error ends with them."""
    import gpa
    import gpa.api
    from gpa.target import LoadedTarget

    def loaded(target, kwargs=None, **settings):
        return LoadedTarget(torch.nn.Linear(4, 4), None, [(2, 3)], target, inputs_from="2 rows")

    monkeypatch.setattr(gpa.api, "load_target", loaded)
    with pytest.raises(gpa.GpaError) as info:
        gpa.analyze_target("lib:net")
    assert str(info.value).endswith("\n(inputs chosen by gpa: 2 rows)")
    with pytest.raises(gpa.GpaError) as given:  # inputs the user gave: nothing added
        gpa.analyze_target("lib:net", options=gpa.AnalysisOptions(input_shape=[(2, 3)]))
    assert "inputs chosen by gpa" not in str(given.value)


@pytest.mark.parametrize("command", ["analyze", "check", "explain", "plot", "compare"])
def test_a_bare_zoo_name_is_a_target_on_every_command(command: str, tmp_path: Path) -> None:
    """Found by a surface audit: ``gpa scale resnet`` took the zoo's name, and every other
    command said it "cannot import module 'resnet'". A bare name no module imports by is
    the zoo's entry, on every command; a near miss names the entries it is near."""
    args = {
        "analyze": ["resnet", "-q"],
        "check": ["resnet", "--max-shortest", "99", "-q"],
        "explain": ["resnet", "stem.conv", "-q"],
        "plot": ["resnet", "-o", str(tmp_path / "p.png"), "-q"],
        "compare": ["resnet", "gpa.models:resnet", "-q"],
    }[command]
    result = CliRunner().invoke(main, [command, *args])
    assert result.exit_code == 0, result.output
    bare = load_target("resnet", {"blocks": 2})
    written = load_target("gpa.models:resnet", {"blocks": 2})
    assert str(bare.model) == str(written.model) and bare.input_shape == written.input_shape
    with pytest.raises(TargetError, match="did you mean 'resnet'"):
        load_target("resnt")


def test_a_local_module_named_like_a_zoo_entry_is_read_and_its_error_said(
    tmp_path: Path, monkeypatch
) -> None:
    """Found by a review of the change above: a user's ``resnet.py`` failing to import was
    replaced by the zoo's resnet without a word. The zoo's entry stands in only where no
    module of that name exists; one that exists is read, and its error is said."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet.py").write_text("import some_missing_dependency_xyz\n")
    with pytest.raises(TargetError, match="importing module 'resnet'"):
        load_target("resnet")
    (tmp_path / "resnet.py").write_text(
        "import torch.nn as nn\n\ndef build_model():\n    return nn.Linear(3, 2)\n"
    )
    sys.modules.pop("resnet", None)
    loaded = load_target("resnet")
    assert isinstance(loaded.model, nn.Linear)
    sys.modules.pop("resnet", None)


def test_an_analysis_option_given_as_a_factory_setting_is_named_so(tmp_path: Path) -> None:
    """Found by a surface audit: ``gpa.scaling("nets.py:build", "depth", …,
    layer_types=[...])`` said only that ``build`` does not accept 'layer_types' (the
    study's keywords are the factory's settings). The message now says it is an analysis
    option and where it goes."""
    (tmp_path / "nets.py").write_text(
        "import torch.nn as nn\n\n"
        "def build(depth):\n"
        "    return nn.Sequential(*(nn.Linear(2, 2) for _ in range(depth)))\n"
    )
    with pytest.raises(TargetError) as info:
        gpa.scaling(f"{tmp_path / 'nets.py'}:build", "depth", [1, 2, 3], layer_types=["Linear"])
    said = str(info.value)
    assert "does not accept 'layer_types'" in said
    assert "'layer_types': an analysis option, not the factory's" in said
    assert "options=gpa.AnalysisOptions(...)" in said
