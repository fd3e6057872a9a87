"""Exact pooling of BN-branch batch moments for the batch-average pass.

Each batch contributes ``(num_values, mean, var)`` per channel. The pool keeps the
count, the mean and ``M2 = sum of squared deviations`` in float64 and merges batches
with Chan et al.'s parallel formula, which equals ``E[x^2] - E[x]^2`` over all
values seen (not an average of per-batch variances) without its cancellation.
Pools of several processes merge the same way (:meth:`merge`).
"""
import torch


class BatchAverage:
    """Running pool of per-channel (count, mean, M2) in float64."""

    def __init__(self, num_features: int, device=None):
        self.count = 0.0
        self.mean = torch.zeros(num_features, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(num_features, dtype=torch.float64, device=device)

    def add(self, mean: torch.Tensor, var: torch.Tensor, num_values: float) -> None:
        """Pool one batch: ``mean``/``var`` are over its ``num_values`` values per channel."""
        self.merge(float(num_values), mean.to(torch.float64), var.to(torch.float64) * num_values)

    def merge(self, count: float, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Merge another pool given as ``(count, mean, M2)``."""
        if count <= 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * count / total)
        self.count = total

    @property
    def variance(self) -> torch.Tensor:
        """Pooled (biased) variance ``M2 / count``."""
        return self.m2 / max(self.count, 1.0)
