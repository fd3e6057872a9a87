"""A literal, one-vector-at-a-time float64 sparsestmax written from the algorithm's steps
(Python lists and loops), sharing no code with ``sn_mm.ops.sparsestmax``."""
import math


def ref_sparsemax(z):
    """Euclidean projection onto the simplex (sort, threshold)."""
    s = sorted(z, reverse=True)
    cumsum, size = 0.0, 0
    for k, v in enumerate(s, 1):
        cumsum += v
        if 1 + k * v > cumsum:
            size, total = k, cumsum
    tau = (total - 1) / size
    return [max(v - tau, 0.0) for v in z]


def ref_sparsestmax(z, r, tie_tol=1e-12):
    """sparsestmax of the list ``z`` at radius ``r`` (ball around the simplex centre)."""
    k = len(z)
    p = ref_sparsemax(z)
    for _ in range(k):
        face = [i for i in range(k) if p[i] > 0]
        if len(face) == 1:
            return [1.0 if i == face[0] else 0.0 for i in range(k)]
        c = [1.0 / len(face) if i in face else 0.0 for i in range(k)]
        rho2 = r * r - (1.0 / len(face) - 1.0 / k)
        d = [a - b for a, b in zip(p, c)]
        dist = math.sqrt(sum(v * v for v in d))
        if rho2 <= 0 or dist * dist >= rho2:
            return p
        if dist <= tie_tol:  # towards the largest logit of the face, lowest index first
            best = max(face, key=lambda i: (z[i], -i))
            d = [(1.0 if i == best else 0.0) - c[i] for i in range(k)]
            dist = math.sqrt(sum(v * v for v in d))
        rho = math.sqrt(rho2)
        p = [ci + rho * di / dist for ci, di in zip(c, d)]
        if min(p) >= 0:
            return p
        p = ref_sparsemax(p)
    return p
