"""Each layer group's gradient norm at the logged steps: where the gradients of a
fine-tune go (a head that sends large gradients into the lower layers shows here).

The norms are taken before clipping, at the optimizer step that is about to be logged,
and stay on the device until the log reads them, so measuring never waits for the GPU.
"""

from __future__ import annotations

import torch

from kubetune_trainer.freezing import find_layer_groups


class LayerGradNorms:
    """The gradient norm of each of a model's layer groups (freezing.py's), when measured."""

    def __init__(
        self, model: torch.nn.Module, device: torch.device, *, enabled: bool = True
    ) -> None:
        """`enabled` false (a sharded model: no process holds whole gradients): nothing is
        measured, and the log has no layer norms."""
        parameters = dict(model.named_parameters())
        self.layer_parameters = {
            group: [parameters[name] for name in names]
            for group, names in find_layer_groups(model).named().items()
            if names and enabled
        }
        self.device = device
        self._measured: torch.Tensor | None = None

    def measure(self) -> None:
        """Take each group's norm of the gradients now, on the device."""
        if not self.layer_parameters:
            return
        zero = torch.zeros((), device=self.device)
        norms = []
        for parameters in self.layer_parameters.values():
            grads = [p.grad for p in parameters if p.grad is not None]
            norms.append(torch.nn.utils.get_total_norm(grads).float() if grads else zero)
        self._measured = torch.stack(norms)

    def take(self) -> dict[str, float] | None:
        """The norms last measured, by layer group (None if none were since the last take)."""
        if self._measured is None:
            return None
        norms = self._measured.tolist()
        self._measured = None
        return dict(zip(self.layer_parameters, norms, strict=True))
