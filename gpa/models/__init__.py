"""Reference model zoo: small, faithful PyTorch models of every family the paper discusses.

Each family lives in its own module (``plain``, ``residual``, ``partial_residual``,
``dense``, ``sparse``, ``cross_stage``, ``one_shot``, ``layer_aggregation``, ``darknet``; the
paper's detectors in ``yolo``) built from the shared parts of :mod:`gpa.models.blocks`; every
entry is a factory registered with :func:`register`, callable without arguments, whose
keyword parameters are its knobs. Every built model carries ``model.input_shape``.

Adding an entry: decorate its factory with ``@register(...)`` in a family module this
package imports (below), then run ``python scripts/gen_models_doc.py``, which rewrites
``docs/models.md`` and the manifest ``gpa zoo`` lists without importing torch (a test
fails while they are stale). ``gpa.models.NAME`` and the TARGET ``gpa.models:NAME`` give
every registered factory; the names imported below are also in ``__all__``.

Example:
    >>> import gpa.models
    >>> "resnet" in gpa.models.names()
    True
    >>> model = gpa.models.build("resnet", blocks=4)
    >>> model.input_shape
    (1, 3, 64, 64)
    >>> gpa.models.resnet is gpa.models.describe("resnet").factory
    True

Note: the package attribute ``gpa.models.resnet`` (and so on) is the *factory*; the family
modules have other names (``from gpa.models.residual import residual_net``), and
:func:`register` refuses an entry named as one of them, which would hide it.
"""

from gpa.models.registry import (
    ModelInfo,
    ZooError,
    build,
    describe,
    entries,
    manifest,
    names,
    register,
)

# Factories, bound after their modules are loaded, so the names refer to the functions.
from gpa.models.plain import plainnet  # isort: skip
from gpa.models.residual import resnet, resnet_stopgrad  # isort: skip
from gpa.models.partial_residual import prn  # isort: skip
from gpa.models.dense import densenet  # isort: skip
from gpa.models.sparse import sparsenet  # isort: skip
from gpa.models.cross_stage import csp  # isort: skip
from gpa.models.one_shot import vovnet, vovnet99, vovnet99_elan, vovnet99_elan_csp  # isort: skip
from gpa.models.layer_aggregation import elan, elan_h  # isort: skip
from gpa.models.darknet import (  # isort: skip
    cspdarknet53,
    cspresnet50,
    cspresnext50,
    darknet53,
    resnet50_darknet,
    resnext50_darknet,
)
from gpa.models.yolo import (  # isort: skip
    yolo_csp,
    yolo_csp_stopgrad,
    yolo_elan,
    yolo_elan_af,
    yolo_prn,
    yolo_v3,
)

__all__ = [
    "ModelInfo",
    "ZooError",
    "build",
    "describe",
    "entries",
    "manifest",
    "names",
    "register",
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


def __getattr__(name: str) -> object:
    """A factory registered but not imported above (an entry a family module adds): the
    registry is what ``gpa.models.NAME`` and the TARGET ``gpa.models:NAME`` read."""
    if name in names():
        return describe(name).factory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
