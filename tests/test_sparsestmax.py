"""sparsemax / sparsestmax: simplex, r = 0, one-hot radius, continuity, tie-break, gradient."""
import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from sn_mm import sparsemax, sparsestmax
from tests.ssn_reference import ref_sparsemax, ref_sparsestmax

ONE_HOT_RADIUS = {3: math.sqrt(2 / 3), 2: math.sqrt(1 / 2)}
RADII = (0.0, 0.05, 0.2, 0.35, 0.45, 0.6, 0.75, 0.8, 0.9, 1.0)


def logits(k, n=400, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=gen, dtype=torch.float64) * scale
    specials = torch.tensor([[1.0] * k, [0.0] * k, [2.0] + [0.0] * (k - 1),
                             [1.0, 1.0] + [-3.0] * (k - 2)], dtype=torch.float64)
    return torch.cat([z, specials])


@pytest.mark.parametrize('k', [2, 3])
@pytest.mark.parametrize('r', RADII)
def test_on_simplex_and_matches_reference(k, r):
    z = logits(k, scale=0.5)
    p = sparsestmax(z, r)
    assert p.shape == z.shape and p.dtype == z.dtype
    assert (p >= 0).all()
    assert_close(p.sum(-1), torch.ones(len(z), dtype=z.dtype), atol=1e-12, rtol=0)
    expected = torch.tensor([ref_sparsestmax(row, r) for row in z.tolist()], dtype=z.dtype)
    assert_close(p, expected, atol=1e-10, rtol=0)


def test_batched_shapes_and_float32():
    z = logits(3, n=60).reshape(4, 16, 3)
    assert_close(sparsestmax(z, 0.3), sparsestmax(z.reshape(-1, 3), 0.3).reshape(4, 16, 3))
    p32 = sparsestmax(z.float(), torch.tensor(0.3))
    assert p32.dtype == torch.float32
    assert_close(p32, sparsestmax(z, 0.3).float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize('k', [2, 3, 5])
def test_radius_zero_is_sparsemax(k):
    z = logits(k, scale=2.0)
    assert_close(sparsestmax(z, 0.0), sparsemax(z), atol=0, rtol=0)
    expected = torch.tensor([ref_sparsemax(row) for row in z.tolist()], dtype=z.dtype)
    assert_close(sparsemax(z), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize('k', [2, 3])
def test_one_hot_from_the_vertex_radius_on(k):
    z = logits(k, n=2000, scale=0.3)
    for r, dtype in itertools.product((ONE_HOT_RADIUS[k], ONE_HOT_RADIUS[k] + 0.01, 1.0, 3.0),
                                      (torch.float64, torch.float32)):
        p = sparsestmax(z.to(dtype), r)
        assert ((p > 0).sum(-1) == 1).all() and (p.max(-1).values == 1).all(), (r, dtype)
        # the chosen vertex is the largest logit's (lowest index among equal ones)
        assert (p.argmax(-1) == z.to(dtype).argmax(-1)).all()
    # below that radius near-uniform logits are not one-hot yet
    below = sparsestmax(z, ONE_HOT_RADIUS[k] - 0.02)
    assert ((below > 0).sum(-1) > 1).any()


@pytest.mark.parametrize('k', [2, 3])
@pytest.mark.parametrize('r', (0.1, 0.3, 0.5, 0.7))
def test_continuous_in_logits(k, r):
    """Small logit changes give small output changes, away from the tie set z ~ const."""
    z = logits(k, n=600, seed=3, scale=0.4)[:600]
    spread = z.max(-1).values - z.min(-1).values
    z = z[spread > 0.2]  # ||p - c|| bounded away from 0: the push amplifies by <= ~10
    gen = torch.Generator().manual_seed(4)
    delta = torch.randn(z.shape, generator=gen, dtype=z.dtype) * 1e-7
    jump = (sparsestmax(z + delta, r) - sparsestmax(z, r)).norm(dim=-1)
    assert jump.max() < 1e-5


@pytest.mark.parametrize('r', (0.1, 0.45))
def test_continuous_where_the_sparsemax_support_changes(r):
    """A line through the edge {IN, LN} of the triangle, near (but not at) its midpoint:
    sparsemax's support changes from 2 to 3 entries. The ball is centred at the simplex
    centre, so the output moves continuously (measuring r from the edge midpoint would
    jump here by about r)."""
    t = torch.linspace(-0.3, 0.3, 6001, dtype=torch.float64)
    z = torch.stack([torch.full_like(t, 0.53), torch.full_like(t, 0.47), t], -1)
    assert set((sparsemax(z) > 0).sum(-1).tolist()) == {2, 3}  # crosses the support change
    p = sparsestmax(z, r)
    steps = (p[1:] - p[:-1]).norm(dim=-1)
    assert steps.max() < 50 * (t[1] - t[0])


def test_tie_break_towards_largest_logit_then_lowest_index():
    z = [torch.tensor(row, dtype=torch.float64) for row in (
        [1.0, 1.0, 1.0], [1.0, 2.0, 2.0], [0.0, 0.0, -4.0], [-4.0, 0.0, 0.0], [5.0, 5.0])]
    out = [sparsestmax(row, 0.5) for row in z]
    assert out[0][0] > out[0][1] == out[0][2]  # uniform: towards IN
    assert out[1][0] == 0 and out[1][1] > out[1][2] > 0  # edge {LN, BN} midpoint: LN
    assert out[2][0] > out[2][1] > 0 == out[2][2]
    assert out[3][1] > out[3][2] > 0 == out[3][0]
    assert out[4][0] > out[4][1]
    # the same pushes as the reference
    for row, p in zip(z, out):
        assert_close(p, torch.tensor(ref_sparsestmax(row.tolist(), 0.5), dtype=p.dtype),
                     atol=1e-12, rtol=0)


@pytest.mark.parametrize('k', [2, 3])
@pytest.mark.parametrize('r', (0.0, 0.15, 0.3, 0.45, 0.6, 0.75))
def test_gradcheck_float64(k, r):
    z = logits(k, n=40, seed=k * 10 + int(r * 100), scale=0.6)[:40]
    z = z[(z.max(-1).values - z.min(-1).values) > 0.05].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: sparsestmax(z, r), (z,), eps=1e-7, atol=1e-6)


def test_gradient_is_finite_everywhere_and_zero_on_ties_and_vertices():
    z = logits(3, n=200, seed=5, scale=0.5).requires_grad_(True)
    for r in RADII:
        g, = torch.autograd.grad((sparsestmax(z, r) * torch.arange(1.0, 4.0)).sum(), z)
        assert torch.isfinite(g).all()
    uniform = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    g, = torch.autograd.grad((sparsestmax(uniform, 0.3) ** 2).sum(), uniform)
    assert (g == 0).all()
    radius = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    sparsestmax(uniform, radius)[:, 0].sum().backward()
    assert torch.isfinite(radius.grad) and radius.grad > 0  # larger radius: more IN


def test_bad_input_is_named():
    z = torch.zeros(3)
    for bad in (-0.1, float('nan'), float('inf')):
        with pytest.raises(ValueError, match='radius must be a finite number >= 0'):
            sparsestmax(z, bad)
    with pytest.raises(ValueError, match=r'radius must be a finite number >= 0, got -1.0'):
        sparsestmax(z, torch.tensor(-1.0))
    with pytest.raises(ValueError, match='radius must be a scalar'):
        sparsestmax(z, torch.zeros(2))
    with pytest.raises(TypeError, match='radius must be a number'):
        sparsestmax(z, '0.5')
    with pytest.raises(TypeError, match='floating-point'):
        sparsestmax(torch.zeros(3, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match=r'shape \(\.\.\., K\)'):
        sparsestmax(torch.tensor(1.0), 0.1)
