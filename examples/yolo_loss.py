"""YOLOv8n (Ultralytics, from its model YAML) measured with its own training loss, on
labelled batches as Ultralytics' data loader gives them.

gpa measure examples/yolo_loss.py --outputs boxes --outputs scores     (needs ultralytics)
gpa analyze examples/yolo_loss.py --outputs boxes --outputs scores --channels

The loss reads the head's boxes and scores; the feature maps it also returns (``feats``)
it reads for their shapes alone, so the paths are those to boxes and scores
(``docs/semantics.md`` §1.5).
"""

import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import DEFAULT_CFG

torch.manual_seed(0)  # the same weights on every load
model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
model.args = get_cfg(DEFAULT_CFG)  # the loss reads its box, class and DFL gains here
input_shape = (1, 3, 64, 64)

_draw = torch.Generator().manual_seed(0)


def _batch(images: int = 4, boxes: int = 3) -> dict:
    """Images, and per box: the image it is in, its class, its (x, y, w, h) normalised."""
    return {
        "img": torch.rand(images, 3, 64, 64, generator=_draw),
        "batch_idx": torch.arange(images).repeat_interleave(boxes).float(),
        "cls": torch.randint(0, 2, (images * boxes, 1), generator=_draw).float(),
        "bboxes": torch.rand(images * boxes, 4, generator=_draw) * 0.5 + 0.25,
    }


example_batches = [_batch() for _ in range(3)]


def forward_inputs(batch: dict) -> torch.Tensor:
    return batch["img"]


def loss_fn(outputs, batch: dict) -> torch.Tensor:
    # Ultralytics' criterion: (its three losses × batch size, their detached values)
    return model.loss(batch, outputs)[0].sum()
