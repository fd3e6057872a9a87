r"""sparsemax and sparsestmax (Shao et al., CVPR 2019, arXiv:1903.03793), pure torch.

Both map logits ``z`` of shape ``(..., K)`` to points of the probability simplex
:math:`\Delta = \{p \ge 0, \sum_k p_k = 1\}` along the last dimension.

**sparsemax** is the Euclidean projection onto the simplex,
:math:`p = \max(z - \tau, 0)` with :math:`\tau` such that :math:`\sum_k p_k = 1`. On a
fixed support :math:`S` it is affine, :math:`p_S = z_S - (\sum_S z - 1) / |S|`, so its
Jacobian is :math:`I - \mathbf{1}\mathbf{1}^\top / |S|` on :math:`S` and 0 elsewhere.

**sparsestmax** additionally keeps the output at distance at least ``r`` from the
simplex centre :math:`u = \mathbf{1}/K`, pushing it outwards radially:

1. ``p = sparsemax(z)``, ``F`` its support. If ``|F| == 1`` (one-hot), return ``p``.
2. ``c`` = centroid of the face ``F`` (:math:`1/|F|` on ``F``). ``c`` is the orthogonal
   projection of ``u`` onto the face's plane, :math:`\|c - u\|^2 = 1/|F| - 1/K`, so the
   ball of radius ``r`` around ``u`` cuts that plane in the circle (sphere) of radius
   :math:`\rho = \sqrt{r^2 - \|c - u\|^2}` around ``c``. If :math:`\rho^2 \le 0` or
   :math:`\|p - c\| \ge \rho`, return ``p``. Otherwise
   :math:`p \leftarrow c + \rho\,(p - c)/\|p - c\|`.
3. If an entry of ``p`` is now negative, project ``p`` onto the simplex again (this is
   the projection onto the face with the negative entries removed; entries within
   rounding of 0, :math:`\le 4 K \epsilon`, count as negative so that a point pushed
   exactly onto a vertex is exactly one-hot), take its support as
   the new face ``F`` (so the radius shrinks to :math:`\sqrt{r^2 - \|c' - u\|^2}`, i.e.
   :math:`\rho'^2 = \rho^2 - \|c' - c\|^2`) and repeat from 2. Each repetition removes at
   least one entry, so ``K - 1`` rounds always suffice; they run unconditionally with
   masks (no data-dependent Python branching, no host synchronization).

At ``r = 0`` this is sparsemax. For ``K = 3`` every output is one-hot once
:math:`r \ge \sqrt{2/3}` (the distance from ``u`` to a vertex), for ``K = 2`` once
:math:`r \ge \sqrt{1/2}`.

*Centre of the ball.* The ball is centred at ``u`` also when sparsemax's support is a
lower face; on that face the radius is the shrunk one of step 2. Measuring the full
radius from the centroid of a lower support face instead would make the map jump
where sparsemax's support changes (e.g. ``K = 3``, ``r = 0.1``: just inside the
triangle near the middle of an edge nothing is pushed, on the edge the point would be
pushed by 0.1), so that reading is not used.

*Tie-break.* When ``p == c`` (all logits of the face equal) there is no direction to
push in; sparsestmax then pushes towards the vertex of the **largest logit** of the
face, and among equal largest logits towards the **lowest index** (for SN's
``[IN, LN, BN]`` order: IN before LN before BN). ``p`` and ``c`` count as equal when
:math:`\|p - c\| \le 8 K \epsilon (1 + \max_F |z|)` (``eps`` of the dtype), i.e. up to
the rounding of ``z - \tau``.

*Gradient.* Every discrete decision (supports, whether a round pushes, ties) is taken
on detached values; the value is then computed from ``z`` with differentiable torch
ops of the selected piece (projections and the radial push), so autograd returns the
exact derivative of the piece the input lies in: float64 gradcheck passes away from
the kinks (support changes, :math:`\|p - c\| = \rho`). On the tie piece the output is
constant and the gradient is 0. Unselected pieces are evaluated with safe
denominators, so they never inject NaN or Inf into the gradient.
"""
from numbers import Real
from typing import Union

import torch

Radius = Union[float, torch.Tensor]


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f'logits must be a torch.Tensor, got {type(logits).__name__}')
    if not logits.is_floating_point():
        raise TypeError(f'logits must be a floating-point tensor, got {logits.dtype}')
    if logits.dim() == 0 or logits.shape[-1] < 1:
        raise ValueError(f'logits must have shape (..., K) with K >= 1, got shape '
                         f'{tuple(logits.shape)}')


def _support(z: torch.Tensor) -> torch.Tensor:
    """Boolean support of sparsemax(z) (no gradient; ties at the threshold included)."""
    z = z.detach()
    k = z.shape[-1]
    sorted_z, order = torch.sort(z, dim=-1, descending=True)
    cumsum = sorted_z.cumsum(-1)
    ranks = torch.arange(1, k + 1, device=z.device, dtype=z.dtype)
    size = (1 + ranks * sorted_z > cumsum).sum(-1, keepdim=True)  # >= 1 always
    in_support = torch.arange(k, device=z.device) < size
    return torch.zeros_like(in_support).scatter(-1, order, in_support)


def _project(z: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Affine projection of ``z`` onto the plane of ``face``, zero off it (differentiable)."""
    size = face.sum(-1, keepdim=True).to(z.dtype)
    tau = (torch.where(face, z, 0.0).sum(-1, keepdim=True) - 1) / size
    # a one-entry face is the vertex: exactly 1 (``z - (z - 1)`` may round to 1 - eps)
    return torch.where(face, torch.where(size == 1, 1.0, z - tau), 0.0)


def sparsemax(logits: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``logits`` (..., K) onto the simplex (Martins & Astudillo, 2016)."""
    _check_logits(logits)
    return _project(logits, _support(logits))


def _radius_tensor(radius: Radius, like: torch.Tensor) -> torch.Tensor:
    if isinstance(radius, torch.Tensor):
        if radius.numel() != 1:
            raise ValueError(f'radius must be a scalar, got a tensor of shape '
                             f'{tuple(radius.shape)}')
        # Validated where that costs no host synchronization (CPU, eager).
        if radius.device.type == 'cpu' and not torch.compiler.is_compiling():
            value = float(radius.detach().reshape(()))
            if not (value >= 0 and value != float('inf')):
                raise ValueError(f'radius must be a finite number >= 0, got {value}')
        return radius.reshape(()).to(like.dtype)
    if isinstance(radius, bool) or not isinstance(radius, Real):
        raise TypeError(f'radius must be a number or a scalar tensor, got '
                        f'{type(radius).__name__}')
    if not (radius >= 0 and radius != float('inf')):
        raise ValueError(f'radius must be a finite number >= 0, got {radius!r}')
    return like.new_tensor(float(radius))


def sparsestmax(logits: torch.Tensor, radius: Radius) -> torch.Tensor:
    """sparsestmax of ``logits`` (..., K) at ``radius`` ``r >= 0`` (see the module docstring).

    Args:
        logits: floating-point tensor, the simplex is along the last dimension.
        radius: a number or a scalar tensor (a scalar tensor on an accelerator is not
            validated, to avoid a host synchronization).

    Returns:
        A tensor like ``logits`` whose last dimension lies on the simplex.
    """
    _check_logits(logits)
    z = logits
    k = z.shape[-1]
    r2 = _radius_tensor(radius, z).to(z.device).square()
    face = _support(z)
    p = _project(z, face)
    if k == 1:
        return p
    eps = torch.finfo(z.dtype).eps
    key = z.detach()
    for _ in range(k - 1):
        p = _push(p, face, r2, key, k, eps)
        with torch.no_grad():
            # entries within rounding of 0 count as having left the face too (a point
            # pushed exactly onto the face's boundary, e.g. a vertex at r = sqrt(2/3))
            out = face & (p <= 4 * k * eps)
            left = out.any(-1, keepdim=True)
            inside = torch.where(face & ~out, p, float('-inf'))  # never re-enter the face
            face = torch.where(left, _support(inside), face)
        p = torch.where(left, _project(p, face), p)
    return p


def _push(p, face, r2, key, k, eps):
    """One round of step 2: push ``p`` radially out to the face's circle if inside it."""
    size = face.sum(-1, keepdim=True).to(p.dtype)
    centre = face.to(p.dtype) / size
    rho2 = r2 - (1 / size - 1 / k)
    d = p - centre
    # re-centre on the face (exact arithmetic: a no-op): the push then keeps the sum at 1
    # to rounding even when ||d|| is tiny and the direction d / ||d|| ill-conditioned
    d = torch.where(face, d - d.sum(-1, keepdim=True) / size, 0.0)
    with torch.no_grad():
        dist2 = d.square().sum(-1, keepdim=True)
        scale = 1 + torch.where(face, key.abs(), 0.0).amax(-1, keepdim=True)
        tie = dist2.sqrt() <= 8 * k * eps * scale
        active = (size > 1) & (rho2 > 0) & (dist2 < rho2)
        # the tie direction: towards the vertex of the face's largest logit (lowest index
        # among equal ones: torch.argmax returns the first maximal index)
        best = torch.where(face, key, float('-inf')).argmax(-1, keepdim=True)
        vertex = torch.zeros_like(p).scatter(-1, best, 1.0)
        tie_dir = (vertex - centre) / torch.sqrt(torch.clamp(1 - 1 / size, min=eps))
    rho = torch.sqrt(torch.where(rho2 > 0, rho2, 1.0))  # only used where rho2 > 0
    norm = torch.sqrt(torch.where(tie | ~active, 1.0, d.square().sum(-1, keepdim=True)))
    direction = torch.where(tie, tie_dir, d / norm)
    return torch.where(active, centre + rho * direction, p)
