r"""EN's ``(N, C)`` step, forward and its backward written out by hand.

:class:`sn_mm.ops.exemplar_norm.ExemplarNorm` runs SN's full-size passes around this step
(its eager path, ``_FusedExemplarNorm``). Autograd would run the same math as a graph of
about 250 small operations per layer, which at the deep ResNet stages (``L = 7 x 7``)
costs as much as the full-size passes; these two functions run it in about 70.
On CPU with the compiled extension the step runs as two C++ loops (``sn_mm._ext.en_step_forward``
/ ``en_step_backward``, the same math, in ``csrc/sn_cpu.cpp``); elsewhere as the torch ops
below. The autograd version stays the definition (``ExemplarNorm._small_step``, used by compile,
export, SyncEN in a distributed run and the tests' comparisons).

Notation, all ``(N, K, C)`` unless said: ``m`` = ``mean_in`` and ``u`` (``(N, C)``, the IN
moments with Bessel's factor applied), the branch moments ``mu_k``, ``v_k`` (IN: ``m``,
``u``; LN: pooled over the channels of a sample; BN: pooled over the batch, or the running
statistics), ``r_k = (v_k + eps)^{-1/2}``.

Forward:

* descriptors ``d_k = (m - mu_k) r_k``; ``z[n, k, j] = sum_s d_k[n, j s + s] w_k[s]`` (the
  grouped 1-D convolution of span ``s``, ``C`` zero-padded to a multiple of it);
  relation ``R = z z^T / J``; logits ``R W^T + b``; softmax per head;
* ``'outputs'``: ``A = sum_k l_k r_k``, ``B = sum_k l_k mu_k r_k``,
  ``scale = gamma A``, ``shift = beta - gamma B``;
* ``'statistics'``: ``mean = sum_k a_k mu_k``, ``var = sum_k b_k v_k``,
  ``rho = (var + eps)^{-1/2}``, ``scale = gamma rho``, ``shift = beta - mean scale``.

Backward from ``S = dL/dscale``, ``T = dL/dshift``: the chain rule through the same steps in
reverse (softmax ``dz = p (g - <p, g>)``, Gram ``dz = (dR + dR^T) z / J``,
``dr/dv = -r^3 / 2``), then the pooled moments back to ``(m, u)``: LN adds
``G_mu / C + 2 G_v (m - mu_LN) / C`` to ``dm`` and ``G_v / C`` to ``du`` (``G``: sums over
the channels), BN the same over the batch when its moments are this batch's.
"""
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


class Saved(NamedTuple):
    """What :func:`step_backward` needs from :func:`step_forward`."""
    mean_in: Tensor
    dev_ln: Tensor          # m - mu_LN, (N, C)
    dev_bn: Optional[Tensor]  # m - mu_BN for batch moments, else None
    mu: Tensor
    v: Tensor
    r: Tensor
    centred: Tensor         # m - mu_k
    blocks: Tensor          # padded descriptors, (N, K, J, span)
    z: Tensor
    relation: Tensor        # (N, K * K)
    mix: Tuple[Tensor, ...]
    weight: Tensor
    reduce_weight: Tensor   # (K, span)
    ratio_weight: Tensor
    eps: float
    mixture: str


class CompiledSaved(NamedTuple):
    """What the C++ backward needs from the C++ forward."""
    # m, u, bn_mean, bn_var, gamma, reduce_w, ratio_w, z, relation, ratios, mu_ln, v_ln
    tensors: Tuple[Tensor, ...]
    batch_bn: bool
    eps: float
    span: int
    outputs: bool


def _extension():
    from .functional import extension
    return extension if hasattr(extension, 'en_step_forward') else None


#: the compiled extension when it has EN's step (and with it SN's channel passes), else None
EXTENSION = _extension()


def step_forward(mean_in: Tensor, u: Tensor, bn: Optional[Tuple[Tensor, Tensor]],
                 batch_bn: bool, weight: Tensor, bias: Tensor, reduce_weight: Tensor,
                 ratio_weight: Tensor, ratio_bias: Tensor, eps: float, span: int,
                 mixture: str):
    """``(scale, shift, saved)``, ``(N, C)`` in ``mean_in``'s dtype; no autograd graph.

    ``bn``: the BN branch's ``(mu, v)`` (C,) or None; ``batch_bn``: they are this batch's
    moments (pooled from ``mean_in``, ``u``), so gradients flow through them.
    The C++ loops on CPU, else :func:`torch_step_forward`.
    """
    if mixture not in ('outputs', 'statistics'):
        raise ValueError(f"mixture must be 'outputs' or 'statistics', got {mixture!r}")
    if EXTENSION is None or mean_in.device.type != 'cpu':
        return torch_step_forward(mean_in, u, bn, batch_bn, weight, bias, reduce_weight,
                                  ratio_weight, ratio_bias, eps, span, mixture)
    dt = mean_in.dtype
    empty = mean_in.new_empty(0)
    as_dt = [t.to(dt).contiguous() for t in (mean_in, u) + (bn if bn is not None else (empty, empty))
             + (weight, bias, reduce_weight, ratio_weight, ratio_bias)]
    m, uu, bm, bv, gamma, beta, w_red, w_ratio, b_ratio = as_dt
    outputs = mixture == 'outputs'
    scale, shift, z, rel, ratios, mu_ln, v_ln = EXTENSION.en_step_forward(
        m, uu, bm, bv, gamma, beta, w_red, w_ratio, b_ratio, eps, span, outputs)
    saved = CompiledSaved((m, uu, bm, bv, gamma, w_red, w_ratio, z, rel, ratios, mu_ln, v_ln),
                          batch_bn and bn is not None, eps, span, outputs)
    return scale, shift, saved


def torch_step_forward(mean_in: Tensor, u: Tensor, bn: Optional[Tuple[Tensor, Tensor]],
                       batch_bn: bool, weight: Tensor, bias: Tensor, reduce_weight: Tensor,
                       ratio_weight: Tensor, ratio_bias: Tensor, eps: float, span: int,
                       mixture: str) -> Tuple[Tensor, Tensor, Saved]:
    """:func:`step_forward` in torch ops (any device)."""
    n, c = mean_in.shape
    dt = mean_in.dtype
    mu_ln = mean_in.mean(1, keepdim=True)
    dev_ln = mean_in - mu_ln
    v_ln = u.mean(1, keepdim=True) + dev_ln.square().mean(1, keepdim=True)
    mus, vs = [mean_in, mu_ln.expand(n, c)], [u, v_ln.expand(n, c)]
    dev_bn = None
    if bn is not None:
        mu_bn = bn[0].to(dt)
        mus.append(mu_bn.expand(n, c))
        vs.append(bn[1].to(dt).expand(n, c))
        if batch_bn:
            dev_bn = mean_in - mu_bn
    mu, v = torch.stack(mus, 1), torch.stack(vs, 1)
    k = mu.shape[1]
    r = torch.rsqrt(v + eps)
    centred = mean_in.unsqueeze(1) - mu
    desc = centred * r
    pad = (-c) % span
    if pad:
        desc = F.pad(desc, (0, pad))
    blocks = desc.view(n, k, desc.shape[-1] // span, span)
    w_red = reduce_weight.to(dt).reshape(k, span)
    z = torch.einsum('nkjs,ks->nkj', blocks, w_red)
    relation = (torch.bmm(z, z.transpose(1, 2)) / z.shape[-1]).reshape(n, k * k)
    w_ratio = ratio_weight.to(dt)
    logits = torch.addmm(ratio_bias.to(dt), relation, w_ratio.t())
    gamma, beta = weight.to(dt), bias.to(dt)
    if mixture == 'outputs':
        lam = torch.softmax(logits, 1)
        mr = mu * r
        a_sum = (lam.unsqueeze(2) * r).sum(1)
        b_sum = (lam.unsqueeze(2) * mr).sum(1)
        scale, shift = gamma * a_sum, beta - gamma * b_sum
        mix = (lam, a_sum, b_sum, mr)
    elif mixture == 'statistics':
        a = torch.softmax(logits[:, :k], 1)
        b = torch.softmax(logits[:, k:], 1)
        mean = (a.unsqueeze(2) * mu).sum(1)
        rho = torch.rsqrt((b.unsqueeze(2) * v).sum(1) + eps)
        scale = gamma * rho
        shift = beta - mean * scale
        mix = (a, b, mean, rho)
    else:
        raise ValueError(f"mixture must be 'outputs' or 'statistics', got {mixture!r}")
    saved = Saved(mean_in, dev_ln, dev_bn, mu, v, r, centred, blocks, z, relation, mix, gamma,
                  w_red, w_ratio, eps, mixture)
    return scale, shift, saved


def _softmax_backward(p: Tensor, g: Tensor) -> Tensor:
    return p * (g - (p * g).sum(1, keepdim=True))


def step_backward(grad_scale: Tensor, grad_shift: Tensor, s
                  ) -> Tuple[Tensor, Tensor, Tuple[Tensor, ...]]:
    """``(d mean_in, d u, (d weight, d bias, d reduce_weight, d ratio_weight, d ratio_bias))``
    from :func:`step_forward`'s ``saved`` (the C++ loops or :func:`torch_step_backward`)."""
    if isinstance(s, Saved):
        return torch_step_backward(grad_scale, grad_shift, s)
    m, uu, bm, bv, gamma, w_red, w_ratio, z, rel, ratios, mu_ln, v_ln = s.tensors
    dt = m.dtype
    dm, du, dg, db, dwr, dwt, dbt = EXTENSION.en_step_backward(
        grad_scale.to(dt).contiguous(), grad_shift.to(dt).contiguous(), m, uu, bm, bv,
        s.batch_bn, gamma, w_red, w_ratio, z, rel, ratios, mu_ln, v_ln, s.eps, s.span,
        s.outputs)
    return dm, du, (dg, db, dwr, dwt, dbt)


def torch_step_backward(grad_scale: Tensor, grad_shift: Tensor, s: Saved
                        ) -> Tuple[Tensor, Tensor, Tuple[Tensor, ...]]:
    """``(d mean_in, d u, (d weight, d bias, d reduce_weight, d ratio_weight, d ratio_bias))``.

    Parameter gradients in the step's dtype, shaped like the parameters given to
    :func:`step_forward` (``reduce_weight`` as ``(K, 1, span)``).
    """
    S, T = grad_scale, grad_shift
    n, c = S.shape
    k, span = s.reduce_weight.shape
    gamma = s.weight
    if s.mixture == 'outputs':
        lam, a_sum, b_sum, mr = s.mix
        d_gamma = (S * a_sum - T * b_sum).sum(0)
        d_a, d_b = (S * gamma).unsqueeze(1), (T * gamma).unsqueeze(1)  # d_b: minus dB
        d_logits = _softmax_backward(lam, (d_a * s.r - d_b * mr).sum(2))
        lam3 = lam.unsqueeze(2)
        d_r = lam3 * (d_a - d_b * s.mu)
        d_mu = -lam3 * d_b * s.r
        d_v = None
    else:
        a, b, mean, rho = s.mix
        d_gamma = (rho * (S - T * mean)).sum(0)
        d_mean = -T * gamma * rho
        d_var = gamma * (S - T * mean) * (-0.5) * (rho * rho * rho)
        d_logits = torch.cat([_softmax_backward(a, (d_mean.unsqueeze(1) * s.mu).sum(2)),
                              _softmax_backward(b, (d_var.unsqueeze(1) * s.v).sum(2))], 1)
        d_mu = a.unsqueeze(2) * d_mean.unsqueeze(1)
        d_v = b.unsqueeze(2) * d_var.unsqueeze(1)
        d_r = None
    d_beta = T.sum(0)
    # linear layer, relation (Gram matrix), grouped reduction
    d_ratio_weight = d_logits.t().mm(s.relation)
    d_ratio_bias = d_logits.sum(0)
    d_rel = d_logits.mm(s.ratio_weight).view(n, k, k)
    d_z = torch.bmm(d_rel + d_rel.transpose(1, 2), s.z) / s.z.shape[-1]
    d_reduce = torch.einsum('nkj,nkjs->ks', d_z, s.blocks)
    # d_desc[n, k, j span + t] = d_z[n, k, j] w_k[t] (one broadcast over n; cut the padding)
    d_desc = (d_z.repeat_interleave(span, -1)
              * s.reduce_weight.repeat(1, d_z.shape[-1]).unsqueeze(0))[..., :c]
    # descriptors d_k = (m - mu_k) r_k
    d_centred = d_desc * s.r
    d_r = d_desc * s.centred if d_r is None else d_r + d_desc * s.centred
    d_mu = d_mu - d_centred
    d_v_r = d_r * (s.r * s.r * s.r).mul_(-0.5)
    d_v = d_v_r if d_v is None else d_v + d_v_r
    # branch moments back to (mean_in, u): IN, LN, BN (batch moments only)
    d_m = d_centred.sum(1) + d_mu[:, 0]
    d_u = d_v[:, 0].clone()
    g_mu, g_v = d_mu[:, 1].sum(1, keepdim=True), d_v[:, 1].sum(1, keepdim=True)
    d_m += g_mu / c + g_v * (2.0 / c) * s.dev_ln
    d_u += g_v / c
    if s.dev_bn is not None:
        g_mu, g_v = d_mu[:, 2].sum(0), d_v[:, 2].sum(0)
        d_m += g_mu / n + g_v * (2.0 / n) * s.dev_bn
        d_u += g_v / n
    return d_m, d_u, (d_gamma, d_beta, d_reduce.view(k, 1, span), d_ratio_weight,
                      d_ratio_bias)
