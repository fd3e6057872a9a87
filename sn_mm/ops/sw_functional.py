r"""The math of Switchable Whitening as functions of tensors (pure torch).

Used by :mod:`sn_mm.ops.switchable_whitening` (the layers, which document the definition
and the authors' conventions) and :mod:`sn_mm.ops.sw_fold` (the eval-mode fold). Shapes:
the input viewed as ``xg (N, G, c, L)``; instance moments ``(N, G, c, 1)`` /
``(N, G, c, c)``; batch moments ``(G, c, 1)`` / ``(G, c, c)``.
"""
from typing import Optional, Tuple

import torch

from .distributed import all_gather_rows_autograd


def instance_moments(xg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample group means ``(N, G, c, 1)`` and biased covariances ``(N, G, c, c)``.

    ``xg`` is the input viewed as ``(N, G, c, L)``. The covariance is computed from the
    centered values (no ``E[xx^T] - mu mu^T`` cancellation). With autograd the backward is
    written out (:class:`_InstanceMoments`): it saves no centered copy of the input.
    """
    if torch.is_grad_enabled() and xg.requires_grad:
        return _InstanceMoments.apply(xg)
    return _instance_moments(xg)


def _instance_moments(xg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    mean = xg.mean(-1, keepdim=True)
    centered = xg - mean
    cov = torch.matmul(centered, centered.transpose(-1, -2)) / xg.shape[-1]
    return mean, cov


class _InstanceMoments(torch.autograd.Function):
    """Gradient of ``(mu, S)``: ``dx = M (x - mu) + g_mu / L`` with ``M = (g_S + g_S^T) / L``.

    (The dependence of ``S`` on ``mu`` drops out: the centered values sum to 0.) Evaluated
    as one batched ``M x + (g_mu / L - M mu)``; only ``x`` and ``mu`` are saved.
    """

    @staticmethod
    def forward(ctx, xg):
        mean, cov = _instance_moments(xg)
        ctx.save_for_backward(xg, mean)
        return mean, cov

    @staticmethod
    def backward(ctx, grad_mean, grad_cov):
        xg, mean = ctx.saved_tensors
        length = xg.shape[-1]
        m = (grad_cov + grad_cov.transpose(-1, -2)) / length
        shift = grad_mean / length - torch.matmul(m, mean)
        return affine_groups(m, shift, xg)


def affine_groups(a: torch.Tensor, b: torch.Tensor, xg: torch.Tensor) -> torch.Tensor:
    """``a @ xg + b`` per sample and group in one batched GEMM (``baddbmm``).

    ``xg`` is ``(N, G, c, L)``; ``a`` broadcasts to ``(N, G, c, c)``, ``b`` to ``(N, G, c, 1)``.
    """
    n, g, c, length = xg.shape
    a = a.expand(n, g, c, c).reshape(n * g, c, c)
    b = b.expand(n, g, c, 1).reshape(n * g, c, 1)
    return torch.baddbmm(b, a, xg.reshape(n * g, c, length)).reshape(n, g, c, length)


def pooled_moments(mean_in: torch.Tensor, cov_in: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batch mean ``(G, c, 1)`` and biased covariance ``(G, c, c)`` from instance moments.

    Law of total covariance (every sample has the same ``L`` positions):
    ``S_BW = mean_n S_IW(n) + mean_n (mu_n - mu)(mu_n - mu)^T``.
    """
    mean = mean_in.mean(0)
    dev = mean_in - mean
    cov = cov_in.mean(0) + torch.matmul(dev, dev.transpose(-1, -2)).mean(0)
    return mean, cov


def union_moments(mean_in: torch.Tensor, cov_in: torch.Tensor, num_positions: int,
                  process_group=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and biased covariance of the union batch of every rank, with autograd.

    Every rank sends ``(count, mean, M2)`` of its ``N_r * L`` positions (zeros for an empty
    batch) in one differentiable all-gather; they are combined with Chan's formula
    ``M2 = sum_r M2_r + sum_r n_r (mu_r - mu)(mu_r - mu)^T``, ``mu = sum_r n_r mu_r / n``.
    Every position (so every sample, at equal spatial size) is weighted equally. Returns
    ``(mean (G, c, 1), cov (G, c, c), total count)``.
    """
    n_local = mean_in.shape[0]
    g, c = mean_in.shape[1], mean_in.shape[2]
    count = float(n_local * num_positions)
    if n_local > 0:
        mean_r = mean_in.mean(0)
        dev = mean_in - mean_r
        m2_r = (cov_in.sum(0) + torch.matmul(dev, dev.transpose(-1, -2)).sum(0)) * num_positions
    else:
        mean_r = mean_in.sum(0)  # zeros, still attached to the graph
        m2_r = cov_in.sum(0)
    row = torch.cat([mean_r.new_full((1,), count), mean_r.reshape(-1), m2_r.reshape(-1)])
    rows = all_gather_rows_autograd(row, process_group)
    counts = rows[:, 0].detach()
    total = counts.sum()
    means = rows[:, 1:1 + g * c].reshape(-1, g, c, 1)
    m2s = rows[:, 1 + g * c:].reshape(-1, g, c, c)
    weights = (counts / total.clamp_min(1.0)).reshape(-1, 1, 1, 1)
    mean = (weights * means).sum(0)
    dev = means - mean
    m2 = m2s.sum(0) + (counts.reshape(-1, 1, 1, 1) * torch.matmul(dev, dev.transpose(-1, -2))
                       ).sum(0)
    return mean, m2 / total.clamp_min(1.0), total


def newton_inverse_sqrt(cov: torch.Tensor, T: int) -> torch.Tensor:
    """``Sigma^{-1/2}`` of a batch of SPD matrices by ``T`` trace-normalized Newton steps.

    ``Sigma_N = Sigma / tr(Sigma)``, ``P_0 = I``, ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 Sigma_N``,
    result ``P_T / sqrt(tr(Sigma))`` (the authors' order of the products).
    """
    c = cov.shape[-1]
    eye = torch.eye(c, dtype=cov.dtype, device=cov.device)
    trace = (cov * eye).sum((-2, -1), keepdim=True)
    cov_n = (cov / trace).reshape(-1, c, c)
    p = eye.expand_as(cov_n)
    for _ in range(T):  # baddbmm: the update and the product in one batched GEMM
        p3 = torch.bmm(torch.bmm(p, p), p)
        p = torch.baddbmm(p, p3, cov_n, beta=1.5, alpha=-0.5)
    p = p.reshape(cov.shape)
    return p * trace.rsqrt()


def mix_statistics(sw_type: int, mean_w: torch.Tensor, var_w: torch.Tensor,
                   mean_bn: torch.Tensor, cov_bn: torch.Tensor,
                   mean_in: Optional[torch.Tensor], cov_in: Optional[torch.Tensor],
                   mean_ln: Optional[torch.Tensor], var_ln: Optional[torch.Tensor],
                   eps: float, sw5_cov: str = 'paper') -> Tuple[torch.Tensor, torch.Tensor]:
    """The mixed mean and covariance (``+ eps I``) of the branches of ``sw_type``.

    Batch terms are ``(G, c, 1)`` / ``(G, c, c)``; instance terms ``(N, G, c, 1)`` /
    ``(N, G, c, c)``; LN terms ``(N, 1, 1, 1)``. Weights in the authors' order (module doc).
    """
    c = cov_bn.shape[-1]
    eye = torch.eye(c, dtype=cov_bn.dtype, device=cov_bn.device)
    if sw_type == 1:
        return mean_bn, cov_bn + eps * eye
    if sw_type == 2:
        mean = mean_w[0] * mean_bn + mean_w[1] * mean_in
        cov = var_w[0] * cov_bn + var_w[1] * cov_in
    elif sw_type == 3:
        mean = mean_w[0] * mean_bn + mean_w[1] * mean_in + mean_w[2] * mean_ln
        cov = var_w[0] * cov_bn + var_w[1] * cov_in + (var_w[2] * var_ln) * eye
    else:
        mean = ((mean_w[0] + mean_w[2]) * mean_bn + (mean_w[1] + mean_w[3]) * mean_in
                + mean_w[4] * mean_ln)
        w_bn, w_in = (var_w[2], var_w[3]) if sw5_cov == 'paper' else (var_w[0], var_w[1])
        cov = (var_w[0] * cov_bn + var_w[1] * cov_in + w_bn * (cov_bn * eye)
               + w_in * (cov_in * eye) + (var_w[4] * var_ln) * eye)
    return mean, cov + eps * eye
