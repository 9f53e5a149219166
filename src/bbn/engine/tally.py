"""An epoch's running tally: loss and accuracy sums kept on the device (the host waits only
when they are shown), images, skipped steps, wall time, and the position a mid-epoch
checkpoint saves (`partial`) and a resumed epoch continues from."""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch

from bbn.engine.distributed import World
from bbn.engine.nonfinite import NonFiniteLoss, first_nonfinite
from bbn.methods import StepResult


class EpochTally:
    """The sums of one epoch of `steps` steps on this rank, started afresh or from `partial`."""

    def __init__(self, epoch: int, steps: int, device: torch.device, world: World,
                 partial: dict[str, Any] | None = None) -> None:
        self.epoch, self.steps, self.device, self.world = epoch, steps, device, world
        self.loss_sum = torch.zeros((), device=device)
        self.acc_sum = torch.zeros((), device=device)
        self.done, self.images, self.skipped, elapsed = 0, 0, 0, 0.0
        if partial is not None:
            self.done, self.skipped, elapsed = partial["step"], partial["skipped"], partial["elapsed_s"]
            self.images = partial["images"] if world.is_main else 0  # the saved count is over all processes
            self.loss_sum, self.acc_sum = partial["loss_sum"].to(device), partial["acc_sum"].to(device)
        self.pending: list[tuple[int, Sequence[torch.Tensor], torch.Tensor]] = []  # since the last check
        self.start = time.perf_counter() - elapsed

    def add(self, step: int, out: StepResult, labels: Sequence[torch.Tensor]) -> None:
        """Count an applied step."""
        loss = out.loss.detach()
        self.loss_sum += loss
        self.acc_sum += out.accuracy.detach()
        self.images += out.images
        self.pending.append((step, labels, loss))

    def skip(self) -> None:
        """Count a step skipped for a non-finite loss or gradient (train.on_nonfinite=skip)."""
        self.skipped += 1

    def _sums(self) -> torch.Tensor:
        """Loss and accuracy sums over every rank, after checking they are finite."""
        sums = self.world.mean(torch.stack([self.loss_sum, self.acc_sum]))
        if not math.isfinite(sums[0].item()):
            raise first_nonfinite(self.epoch, self.steps, self.pending)
        self.pending.clear()
        return sums

    def shown(self, step: int) -> dict[str, str]:
        """The progress bar's loss, accuracy and images per second so far (a host sync)."""
        loss, acc = self._sums().tolist()
        used = max(step - self.skipped, 1)
        rate = self.world.size * self.images / max(time.perf_counter() - self.start, 1e-9)
        return {"loss": f"{loss / used:.3f}", "acc": f"{100 * acc / used:.1f}", "img/s": f"{rate:.0f}"}

    def partial(self, step: int) -> dict[str, Any]:
        """Where the epoch stands after `step` (a mid-epoch checkpoint's `partial`)."""
        loss_sum, acc_sum = self._sums().unbind()
        return {"epoch": self.epoch, "step": step, "steps": self.steps, "loss_sum": loss_sum.cpu(),
                "acc_sum": acc_sum.cpu(), "images": int(self.world.sum(torch.tensor(self.images))),
                "skipped": self.skipped, "elapsed_s": time.perf_counter() - self.start}

    def summary(self) -> dict[str, Any]:
        """The epoch's metrics row entries: mean loss and accuracy of the applied steps,
        images per second, wall time and skipped steps."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        epoch_s = time.perf_counter() - self.start
        if self.skipped == self.steps:
            raise NonFiniteLoss(f"every step of epoch {self.epoch} had a non-finite loss or gradient")
        used = self.steps - self.skipped
        loss_sum, acc_sum = self._sums().tolist()
        images = int(self.world.sum(torch.tensor(self.images)))
        return {"train_loss": loss_sum / used, "train_acc": 100.0 * acc_sum / used,
                "images_per_s": images / max(epoch_s, 1e-9), "epoch_s": epoch_s, "skipped_steps": self.skipped}
