"""Operations the gradient-flow pass answers without running them on the meta device.

Running a node on the meta device costs from microseconds to milliseconds (train-mode
batch norm decomposes into dozens of operations). What the pass records of a result is its
shape, dtype, layout, whether it requires gradient and which inputs gradient reaches; for
some operations an exact stand-in gives all of that at once:

* a shape-preserving call — a norm, a softmax, an activation, dropout, torchvision's
  ``stochastic_depth`` — of one floating tensor (:func:`shape_preserving`) passes it through
  as it is (:func:`passes_as_is`, laid out as the call would: :func:`laid_out`);
* functional normalisations and export's ``aten.view`` run a stand-in (:data:`STAND_INS`).

Example:
    >>> import torch, torch.nn as nn
    >>> passes_as_is(nn.BatchNorm2d(3), torch.empty(2, 3, 4, 4, device="meta"))
    True
    >>> passes_as_is(nn.BatchNorm2d(5), torch.empty(2, 3, 4, 4, device="meta"))  # (torch's error)
    False
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from gpa.frontends.fx.shape_rules import normalisation_fits, normalisation_refused
from gpa.frontends.modules import POINTWISE_MODULES

__all__ = ["NORMS", "STAND_INS", "hooked", "laid_out", "passes_as_is", "shape_preserving"]


# Modules whose result has the shape and dtype of their single input and depends
# differentiably on it. Running them on the meta device costs up to milliseconds each
# (train-mode batch norm decomposes into dozens of ops); a clone of the input is an
# exact stand-in for what this pass records: the result's shape, dtype, requires_grad
# and which input it reaches.
_SHAPE_PRESERVING = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.Softmax,
    nn.LogSoftmax,
    *POINTWISE_MODULES,
)


NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


def passes_as_is(module: nn.Module | None, x: torch.Tensor) -> bool:
    """Whether a shape-preserving call (of ``module``; None: a function) may pass ``x``
    through without running: no hook may change its result, the module's weights fit
    ``x`` (else the real call runs and reports torch's error), and an elementwise result
    would be laid out as ``x`` is (``x`` dense; a norm lays its result out anew, see
    :func:`laid_out`)."""
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    if module is None:
        return dense
    if hooked(module):
        return False
    return (dense or isinstance(module, NORMS)) and _fits(module, x)


def laid_out(module: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``x`` with the strides the call's result has: a norm's result is contiguous, or
    channels-last for a channels-last input of a per-channel norm (as torch's CPU
    kernels lay them out; the meta kernels keep the input's strides, unlike them), an
    elementwise result is laid out as its dense input."""
    if not isinstance(module, NORMS) or x.is_contiguous():
        return x
    if not isinstance(module, nn.LayerNorm) and x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.detach().contiguous().requires_grad_(x.requires_grad)


def _fits(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module``'s weights and settings fit an input shaped like ``x``."""
    channels = x.shape[1] if x.dim() >= 2 else None
    if isinstance(module, nn.modules.batchnorm._NormBase):
        try:
            module._check_input_dim(x)
        except (ValueError, AttributeError):
            return False
        stats = module.affine or module.track_running_stats
        return (not stats or channels == module.num_features) and not _one_value(module, x)
    if isinstance(module, nn.LayerNorm):
        shape = tuple(module.normalized_shape)
        return tuple(x.shape[x.dim() - len(shape) :]) == shape and x.dim() >= len(shape)
    if isinstance(module, nn.GroupNorm):
        return channels == module.num_channels and not normalisation_refused(
            F.group_norm, x, {"input": x, "num_groups": module.num_groups}
        )
    if isinstance(module, nn.LocalResponseNorm):
        return x.dim() >= 3
    if isinstance(module, nn.PReLU):
        return module.num_parameters == 1 or channels == module.num_parameters
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        return module.dim is None or -x.dim() <= module.dim < max(x.dim(), 1)
    return not any(True for _ in module.parameters())  # a parameter-free activation


def _one_value(module: nn.modules.batchnorm._NormBase, x: torch.Tensor) -> bool:
    """Whether torch refuses ``module`` (a batch or instance norm) ``x`` whatever its
    values — one value per channel to compute statistics of, above all (the functional
    norm's rule, :func:`~gpa.frontends.fx.shape_rules.normalisation_refused`, given what
    the module passes it): the call runs then, and its error is reported."""
    stats = {"running_mean": module.running_mean, "running_var": module.running_var}
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        if x.dim() == module._get_no_batch_dim():  # (torch adds the batch axis first)
            x = x.unsqueeze(0)
        own = module.training or not module.track_running_stats
        bound = {"input": x, "use_input_stats": own, "eps": module.eps, **stats}
        return normalisation_refused(F.instance_norm, x, bound)
    # (as _BatchNorm.forward: without running statistics it normalises by the batch's)
    own = module.training or (module.running_mean is None and module.running_var is None)
    bound = {"input": x, "training": own, "eps": module.eps, **stats}
    return normalisation_refused(F.batch_norm, x, bound)


# The same for pointwise functions and methods of one tensor (other arguments
# are scalars such as a slope or a dropout probability); torchvision's
# ``stochastic_depth`` (fx records it whole: a meta run of its noise costs ~0.5 ms,
# in every block of ConvNeXt, EfficientNet and Swin) scales each sample alike.
_POINTWISE_NAMES = frozenset(
    "relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ selu celu gelu silu mish sigmoid sigmoid_ "
    "tanh tanh_ hardswish hardsigmoid hardtanh hardtanh_ softplus dropout dropout1d dropout2d "
    "dropout3d alpha_dropout stochastic_depth".split()
)


def _normalised(op: Callable[..., Any], per_channel: bool) -> Callable[..., Any]:
    """A stand-in for the functional normalisation ``op``: a clone of its input that also
    depends on its affine ``weight`` and ``bias`` — what this pass records of the real
    result (shape, dtype, which inputs gradient reaches) without running it (train-mode
    ``F.batch_norm`` decomposes into dozens of meta operations; timm's ``BatchNormAct2d``
    calls it in every block). Affine parameters of the wrong size and calls torch refuses
    (:func:`~gpa.frontends.fx.shape_rules.normalisation_refused`) run the real ``op``, so
    that its error is the one reported. (A plain input is answered before, by the rule of
    :mod:`.shape_rules`, without running anything; this covers the rest: strided inputs,
    other dtypes.)"""
    signature = inspect.signature(op)

    def stand_in(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs).arguments
        x = bound["input"]
        affine = [bound.get(k) for k in ("weight", "bias")]
        affine = [t for t in affine if isinstance(t, torch.Tensor)]
        fits = normalisation_fits(bound, per_channel)
        if not (fits and x.is_floating_point()) or normalisation_refused(op, x, bound):
            return op(*args, **kwargs)
        result = x.clone()
        for t in affine:
            if t.requires_grad:
                result = result + (t.sum() * 0).to(result.dtype)
        return result

    return stand_in


def _viewed(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """ATen's ``view`` in an exported graph, as a reshape where the meta value's strides do
    not allow the view: export drops a ``contiguous()`` of a tensor contiguous in its run,
    and a meta kernel may lay a result out otherwise than the example's device did
    (``scaled_dot_product_attention`` with a mask, on the CPU: the heads' axis inner), so the
    view that followed fits the export's strides and not the meta value's. Either gives the
    same shape and elements, so the same gradient flow."""
    try:
        return torch.ops.aten.view.default(x, size)
    except RuntimeError:
        return torch.ops.aten.reshape.default(x, size)


# Functions replaced by an exact stand-in for this pass (see :func:`_normalised`).
STAND_INS: dict[Callable[..., Any], Callable[..., Any]] = {
    torch.ops.aten.view.default: _viewed,
    F.batch_norm: _normalised(F.batch_norm, per_channel=True),
    F.instance_norm: _normalised(F.instance_norm, per_channel=True),
    F.group_norm: _normalised(F.group_norm, per_channel=True),
    F.layer_norm: _normalised(F.layer_norm, per_channel=False),
}


def _single_float_tensor(args: tuple, kwargs: dict) -> bool:
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    return (
        len(tensors) == 1
        and bool(args)
        and args[0] is tensors[0]
        and tensors[0].is_floating_point()
    )


def shape_preserving(
    submodule: Callable[[str], Any], node: fx.Node, args: tuple, kwargs: dict
) -> bool:
    if not _single_float_tensor(args, kwargs):
        return False
    if node.op == "call_module":
        return not kwargs and isinstance(submodule(node.target), _SHAPE_PRESERVING)
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    module = "" if node.op == "call_method" else getattr(node.target, "__module__", "") or ""
    return name in _POINTWISE_NAMES and (node.op == "call_method" or module.startswith("torch"))


def hooked(module: nn.Module) -> bool:
    """Whether a hook may change what calling ``module`` gives (its own or a global one)."""
    hooks = nn.modules.module
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
    )
