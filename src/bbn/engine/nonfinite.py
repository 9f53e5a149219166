"""Non-finite losses and gradients in training (train.on_nonfinite): what to call them and
how to find the step that had one."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from bbn.errors import BBNError


class NonFiniteLoss(BBNError):
    """A step's loss was NaN or inf (train.on_nonfinite=stop), or every step of an epoch was skipped."""


def batch_classes(labels: Sequence[torch.Tensor], shown: int = 8) -> str:
    """The class ids in a step's labels (one tensor per stream)."""
    classes = torch.unique(torch.cat([y.reshape(-1).cpu() for y in labels])).tolist()
    more = f", ... ({len(classes)} classes)" if len(classes) > shown else ""
    return ", ".join(str(c) for c in classes[:shown]) + more


def first_nonfinite(epoch: int, steps: int,
                    pending: list[tuple[int, Sequence[torch.Tensor], torch.Tensor]]) -> NonFiniteLoss:
    """The error naming the first of `pending` (step, its labels, loss) whose loss is NaN or inf."""
    for i, labels, loss in pending:
        if not math.isfinite(value := loss.item()):
            return NonFiniteLoss(f"non-finite loss ({value}) at epoch {epoch}, step {i}/{steps} "
                                 f"(batch classes {batch_classes(labels)})")
    return NonFiniteLoss(f"non-finite loss at epoch {epoch}, before step {pending[0][0] if pending else steps}")


def grads_finite(model: nn.Module) -> bool:
    """No NaN or inf in the gradients of `model` (one host synchronisation)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
