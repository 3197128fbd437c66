"""The third-party architectures of the zoo tier: torchvision, timm, Ultralytics and
Hugging Face ``transformers``, by family, and how each is run through the three frontends.

Each entry is a ``gpa analyze`` TARGET (``torchvision:resnet50``, ``timm:cspdarknet53``,
``ultralytics:yolov8n.yaml``, ``transformers:bert``) with its ``-k`` options, built by
:func:`gpa.target.load_target` itself, so every row of docs/coverage.md is a command a
user can type. torchvision and timm models are built on the meta device when their
constructor allows it (no weights are allocated), with the inputs the target gives them
(two images of the library's size). Ultralytics and ``transformers`` models are built on
the CPU (small configurations for ``transformers``: two layers, hidden size 64), so that
a real forward and backward pass can check the analysis independently
(:func:`independent_facts`).

:func:`run` analyses an entry with ``tracer="auto"`` (the default) and then with each
frontend ``auto`` did not use, so every frontend's report is at hand; :func:`disagreements`
compares every pair of frontends that read the model on everything a report says per
layer. Shared by ``tests/zoo`` and ``scripts/gen_coverage.py``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

FRONTENDS = ("fx", "export", "autograd")


@dataclass(frozen=True)
class Entry:
    target: str  # a gpa analyze TARGET
    family: str
    kwargs: tuple[tuple[str, Any], ...] = ()  # -k options
    input_shape: tuple[int, ...] | None = None  # instead of the target's own inputs
    device: str = "meta"  # where it is built ("meta" falls back to the CPU)

    @property
    def library(self) -> str:
        library, sep, _ = self.target.partition(":")
        return library if sep else "ultralytics"

    @property
    def name(self) -> str:
        return self.target.partition(":")[2] or self.target

    @property
    def command(self) -> str:
        """The ``gpa analyze`` command line of this entry."""
        parts = ["gpa analyze", self.target]
        parts += [f"-k {k}={v}" for k, v in self.kwargs]
        if self.input_shape is not None:
            parts.append("--input-shape " + ",".join(map(str, self.input_shape)))
        return " ".join(parts)


def _tv(name: str, family: str) -> Entry:
    return Entry(f"torchvision:{name}", family)


def _timm(name: str, family: str) -> Entry:
    return Entry(f"timm:{name}", family)


def _yolo(name: str, family: str) -> Entry:
    return Entry(f"ultralytics:{name}.yaml", family, device="cpu")


def _hf(name: str, family: str, **kwargs: Any) -> Entry:
    return Entry(f"transformers:{name}", family, tuple(kwargs.items()), device="cpu")


# Small transformers configurations: 2 layers, hidden size 64, 2 heads, MLP 128.
_SMALL = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}

ENTRIES: tuple[Entry, ...] = (
    _tv("alexnet", "AlexNet"),
    _tv("vgg11", "VGG"),
    _tv("vgg16_bn", "VGG"),
    _tv("resnet18", "ResNet"),
    _tv("resnet50", "ResNet"),
    _tv("resnet152", "ResNet"),
    _tv("resnext50_32x4d", "ResNeXt"),
    _tv("wide_resnet50_2", "Wide ResNet"),
    _tv("densenet121", "DenseNet"),
    _tv("densenet161", "DenseNet"),
    _tv("mobilenet_v2", "MobileNet v2"),
    _tv("mobilenet_v3_small", "MobileNet v3"),
    _tv("mobilenet_v3_large", "MobileNet v3"),
    _tv("mnasnet1_0", "MNASNet"),
    _tv("efficientnet_b0", "EfficientNet"),
    _tv("efficientnet_v2_s", "EfficientNet"),
    _tv("regnet_x_400mf", "RegNet"),
    _tv("regnet_y_800mf", "RegNet"),
    _tv("shufflenet_v2_x1_0", "ShuffleNet"),
    _tv("squeezenet1_0", "SqueezeNet"),
    _tv("squeezenet1_1", "SqueezeNet"),
    _tv("googlenet", "GoogLeNet"),
    _tv("inception_v3", "Inception"),
    _tv("convnext_tiny", "ConvNeXt"),
    _tv("vit_b_16", "ViT"),
    _tv("swin_t", "Swin"),
    _tv("swin_v2_t", "Swin"),
    _tv("maxvit_t", "MaxViT"),
    # fits its window to the input by writing into a list it is given (fx: a literal)
    Entry("torchvision:swin3d_t", "Swin3D", input_shape=(1, 3, 4, 64, 64)),
    _timm("deit_tiny_patch16_224", "DeiT"),
    _timm("vit_tiny_patch16_224", "ViT"),
    _timm("cait_xxs24_224", "CaiT"),
    _timm("swin_tiny_patch4_window7_224", "Swin"),
    _timm("mixer_b16_224", "MLP-Mixer"),
    _timm("resmlp_12_224", "ResMLP"),
    _timm("gmlp_ti16_224", "gMLP"),
    _timm("cspdarknet53", "CSPDarknet"),
    _timm("cspresnet50", "CSPResNet"),
    _timm("cspresnext50", "CSPResNeXt"),
    _timm("darknet53", "DarkNet"),
    _timm("vovnet39a", "VoVNet"),
    _timm("ese_vovnet19b_dw", "VoVNet"),
    _timm("hrnet_w18_small", "HRNet"),
    _timm("dla34", "DLA"),
    _timm("res2net50_26w_4s", "Res2Net"),
    _timm("res2next50", "Res2Net"),
    _timm("seresnet50", "SENet"),
    _timm("skresnet18", "SKNet"),
    _timm("resnest14d", "ResNeSt"),
    _timm("ecaresnet26t", "ECA-ResNet"),
    _timm("dpn68", "DPN"),
    _timm("xception41", "Xception"),
    _timm("inception_v4", "Inception"),
    _timm("efficientnet_b0", "EfficientNet"),
    _timm("mobilenetv3_large_100", "MobileNet v3"),
    _timm("ghostnet_100", "GhostNet"),
    _timm("rexnet_100", "ReXNet"),
    _timm("regnety_002", "RegNet"),
    _timm("repvgg_a2", "RepVGG"),
    # depthwise convolutions with an identity around each, unfused: runs of segments
    # reaching runs moved along with them (docs/performance.md)
    _timm("mobileone_s0", "MobileOne"),
    _timm("repvit_m0_9", "RepViT"),
    _timm("fastvit_t8", "FastViT"),
    _timm("selecsls42b", "SelecSLS"),
    _timm("dm_nfnet_f0", "NFNet"),
    _timm("convnext_atto", "ConvNeXt"),
    _timm("poolformer_s12", "PoolFormer"),
    _timm("pit_ti_224", "PiT"),
    _timm("levit_128s", "LeViT"),
    _timm("mobilevit_xxs", "MobileViT"),
    _timm("edgenext_xx_small", "EdgeNeXt"),
    _timm("coat_lite_tiny", "CoaT"),
    _timm("tnt_s_patch16_224", "TNT"),
    _timm("visformer_tiny", "Visformer"),
    _timm("beit_base_patch16_224", "BEiT"),
    _yolo("yolov8n", "YOLOv8 (detect)"),
    _yolo("yolo11n", "YOLO11 (detect)"),
    _yolo("yolov8n-seg", "YOLOv8 (segment)"),
    _yolo("yolov8n-cls", "YOLOv8 (classify)"),
    _yolo("yolov8n-pose", "YOLOv8 (pose)"),
    _yolo("rtdetr-l", "RT-DETR"),
    _hf("bert", "BERT", **_SMALL),
    _hf("GPT2LMHeadModel", "GPT-2", n_layer=2, n_embd=64, n_head=2),
    _hf("LlamaForCausalLM", "Llama", **_SMALL, num_key_value_heads=2),
    # mixtures of experts: a fused expert bank, which export meets as Hugging Face's
    # transformers::grouped_mm_fallback on float32 weights
    _hf(
        "MixtralForCausalLM",
        "Mixtral (MoE)",
        **_SMALL,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
    ),
    _hf(
        "Qwen2MoeForCausalLM",
        "Qwen2-MoE",
        **_SMALL,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=64,
        shared_expert_intermediate_size=64,
    ),
    _hf("t5", "T5", num_layers=2, d_model=64, d_kv=32, d_ff=128, num_heads=2),
    _hf("vit", "ViT (HF)", **_SMALL, image_size=32, patch_size=8),
    _hf(
        "whisper",
        "Whisper",
        encoder_layers=2,
        decoder_layers=2,
        d_model=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=16,
        max_source_positions=32,
    ),
)

#: Entries a real forward and backward pass checks (:func:`independent_facts`): every
#: model built on the CPU, and a few torchvision/timm models with branches (auxiliary
#: classifiers that only train mode runs, split-attention, dual paths), built for it.
BACKWARD_CHECKED: tuple[str, ...] = (
    *(e.target for e in ENTRIES if e.device == "cpu"),
    "torchvision:resnet18",
    "torchvision:googlenet",
    "torchvision:inception_v3",
    "timm:cspdarknet53",
    "timm:dpn68",
)


@dataclass(frozen=True)
class KnownDifference:
    """Frontends known to report a model differently, and why (the ``wrong`` side errs)."""

    wrong: tuple[str, ...]  # the frontends that err
    reason: str
    check: Callable[[dict[str, Any]], bool]  # frontend -> report: the difference is this one


# Models on which the frontends are known to differ, and why.
KNOWN_DIFFERENCES: dict[str, KnownDifference] = {}  # none now: fx reads Swin's attention

# Independent facts (:func:`independent_facts`) gpa is known to get wrong, by entry and
# frontend: the exact discrepancy strings expected.
KNOWN_FACT_ERRORS: dict[tuple[str, str], set[str]] = {}

# Module attributes the analyses are known to change (by entry), and why.
KNOWN_SIDE_EFFECTS: dict[str, tuple[set[str], str]] = {}

KNOWN_FACT_REASONS: dict[str, str] = {}


def records(layers: dict[str, Any]) -> list[tuple]:
    """Everything a report says per layer, in order: name, type, calls, shortest,
    longest, timestamps, num_paths, path histogram, sources."""
    return [
        (
            name,
            r.type,
            r.calls,
            r.shortest,
            r.longest,
            r.timestamps,
            r.num_paths,
            r.path_histogram,
            tuple(r.sources),
        )
        for name, r in layers.items()
    ]


@dataclass
class Outcome:
    """The three frontends on one entry: what each found, how long it took."""

    entry: Entry
    built_on: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)  # example_inputs / input_shape
    reports: dict[str, Any] = field(default_factory=dict)  # frontend -> Report or None
    errors: dict[str, str] = field(default_factory=dict)  # frontend -> first line of why not
    seconds: dict[str, float] = field(default_factory=dict)
    auto_tracer: str | None = None
    auto_error: str = ""
    model: nn.Module | None = None
    changed: set[str] = field(default_factory=set)  # module attributes the analyses changed

    @property
    def read_by(self) -> tuple[str, ...]:
        return tuple(t for t in FRONTENDS if self.reports.get(t) is not None)

    @property
    def auto(self) -> Any:
        return self.reports.get(self.auto_tracer) if self.auto_tracer else None

    @property
    def pairs(self) -> dict[tuple[str, str], bool]:
        """Each pair of frontends that read the model: identical records or not."""
        return {
            (a, b): records(self.reports[a].layers) == records(self.reports[b].layers)
            for a, b in itertools.combinations(self.read_by, 2)
        }

    @property
    def agree(self) -> bool | None:
        """All frontends that read the model agree (None: fewer than two read it)."""
        pairs = self.pairs
        return all(pairs.values()) if pairs else None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def build(entry: Entry) -> tuple[Any, str]:
    """The loaded target of ``entry`` and where it was built (``"meta"`` or ``"cpu"``)."""
    from gpa.errors import TargetError
    from gpa.target import load_target

    if entry.device == "meta":
        try:
            return load_target(entry.target, dict(entry.kwargs), device="meta"), "meta"
        except TargetError:  # some constructors compute on tensors (.tolist(), .item())
            pass
    return load_target(entry.target, dict(entry.kwargs), device="cpu"), "cpu"


def run(entry: Entry, frontends: tuple[str, ...] = FRONTENDS) -> Outcome:
    """Build ``entry``, analyse it with ``tracer="auto"``, then with every frontend of
    ``frontends`` that ``auto`` did not use; time each."""
    import gpa
    from gpa.errors import GpaError

    loaded, where = build(entry)
    if entry.input_shape is not None:
        inputs: dict[str, Any] = {"input_shape": entry.input_shape}
    elif loaded.example_inputs is not None:
        inputs = {"example_inputs": loaded.example_inputs}
    else:
        inputs = {"input_shape": loaded.input_shape}
    outcome = Outcome(entry, where, inputs, model=loaded.model)
    before = state(loaded.model)
    start = time.perf_counter()
    try:
        report = gpa.analyze(loaded.model, name=loaded.name, **inputs)
    except GpaError as exc:
        outcome.auto_error = first_line(exc)
    else:
        outcome.auto_tracer = report.tracer
        outcome.reports[report.tracer] = report
        outcome.seconds["auto"] = time.perf_counter() - start
    for tracer in frontends:
        if tracer in outcome.reports:
            continue
        start = time.perf_counter()
        try:
            outcome.reports[tracer] = gpa.analyze(
                loaded.model, name=loaded.name, tracer=tracer, **inputs
            )
        except GpaError as exc:
            outcome.reports[tracer] = None
            outcome.errors[tracer] = first_line(exc)
        outcome.seconds[tracer] = time.perf_counter() - start
    if outcome.auto_tracer:  # auto's time stands for the frontend it used
        outcome.seconds[outcome.auto_tracer] = outcome.seconds["auto"]
    after = state(loaded.model)
    outcome.changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return outcome


def _fingerprint(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        total = None
        if type(value) in (torch.Tensor, nn.Parameter) and not value.is_meta:
            total = repr(float(value.detach().double().sum()))  # values: batch-norm statistics
        return ("tensor", id(value), type(value).__name__, str(value.device), total)
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_fingerprint(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _fingerprint(v)) for k, v in value.items()))
    return (type(value).__name__, id(value))


def state(model: nn.Module) -> dict[str, Any]:
    """What a module holds, attribute by attribute (tensors and objects by identity): an
    analysis must leave all of it as it was (docs/semantics.md §1.8)."""
    found: dict[str, Any] = {}
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr in ("_modules", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
                continue
            if attr.endswith("_hooks") and isinstance(value, dict) and not value:
                continue
            found[f"{name}.{attr}" if name else attr] = _fingerprint(value)
    return found


# --------------------------------------------------------------------------------------
# Independent facts: one real forward and backward pass
# --------------------------------------------------------------------------------------


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a returned structure (tuples, lists, dicts, ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _random_like(x: Any) -> Any:
    if not isinstance(x, torch.Tensor):
        return x
    if x.dtype.is_floating_point:
        return torch.randn(x.shape, dtype=x.dtype)
    return torch.randint(0, 100, x.shape, dtype=x.dtype)


def real_pass(
    model: nn.Module, inputs: dict[str, Any]
) -> tuple[dict[str, int], set[int], set[int]]:
    """Run ``model`` once in train mode on random inputs of the analysed shapes, on the
    CPU, with every floating parameter requiring gradient (and none entirely zero: a
    zero-initialised scale stops gradient by its value, not by the architecture);
    backpropagate the sum of every floating tensor it returns. Returns the number of calls
    of each module (forward hooks), the ids of the parameters that received a non-zero
    gradient, and of those that received any gradient tensor (zero included: a weight
    that takes part in the computation, as ``0 * w.sum()`` does)."""
    if "example_inputs" in inputs:
        args = tuple(_random_like(x) for x in inputs["example_inputs"])
    else:
        shapes = inputs["input_shape"]
        shapes = [shapes] if isinstance(shapes[0], int) else shapes
        args = tuple(torch.randn(tuple(s)) for s in shapes)
    model.train()
    generator = torch.Generator().manual_seed(0)
    for p in model.parameters():
        if p.dtype.is_floating_point:
            if not p.detach().any():  # zero-initialised scales (timm's zero_init_last)
                with torch.no_grad():  # would block gradient that the architecture carries
                    p.copy_(0.02 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
            p.requires_grad_(True)
            p.grad = None
    names = {id(m): n for n, m in model.named_modules()}
    calls: dict[str, int] = dict.fromkeys(names.values(), 0)

    def count(module: nn.Module, args: Any, out: Any) -> None:
        calls[names[id(module)]] += 1

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    torch.manual_seed(0)
    try:
        out = model(*args)
    finally:
        for h in hooks:
            h.remove()
    loss = sum(
        t.float().sum() for t in _tensors(out) if t.requires_grad and t.dtype.is_floating_point
    )
    loss.backward()
    touched = {id(p) for p in model.parameters() if p.grad is not None}
    reached = {id(p) for p in model.parameters() if p.grad is not None and bool(p.grad.ne(0).any())}
    return calls, reached, touched


def independent_facts(
    model: nn.Module, report: Any, facts: tuple[dict[str, int], set[int], set[int]]
) -> set[str]:
    """Where ``report`` contradicts a real forward and backward pass (:func:`real_pass`):

    - every module of a layer type (not inside another layer module or a reported
      leaf) is a record, with ``calls`` equal to the number of times it was called —
      except a module never called whose weight takes part in the computation by
      another route (semantics §2: a weight used without a call is no layer use);
    - a layer is reachable exactly when a parameter of its own (one no other layer
      shares: tied weights are left out) received a non-zero gradient.

    Returns one line per contradiction (empty: none).
    """
    from gpa.frontends.modules import DEFAULT_LAYER_TYPES

    calls, reached, touched = facts
    modules = dict(model.named_modules())
    problems: set[str] = set()
    layers = report.layers
    for name, module in modules.items():
        if not name or not isinstance(module, DEFAULT_LAYER_TYPES):
            continue
        parts = name.split(".")
        ancestors = [".".join(parts[:i]) for i in range(1, len(parts))]
        if any(a in layers or isinstance(modules[a], DEFAULT_LAYER_TYPES) for a in ancestors):
            continue
        if name not in layers:
            used = any(id(p) in touched for p in module.parameters())
            if calls[name] or not used:
                problems.add(f"{name}: called {calls[name]} time(s), not reported")
        elif layers[name].calls != calls[name]:
            problems.add(
                f"{name}: called {calls[name]} time(s), reported calls={layers[name].calls}"
            )
    owners: dict[int, list[str]] = {}
    for name in layers:
        if name in modules:
            for p in modules[name].parameters():
                owners.setdefault(id(p), []).append(name)
    for name, record in layers.items():
        if name not in modules:
            continue
        own = [id(p) for p in modules[name].parameters() if owners[id(p)] == [name]]
        if not own:
            continue
        got = any(p in reached for p in own)
        if got != record.reachable:
            problems.add(
                f"{name}: {'receives' if got else 'receives no'} gradient in a real backward "
                f"pass, reported {'reachable' if record.reachable else 'unreachable'}"
            )
    return problems
