"""SN on the 1x1 maps of the ASPP image-pooling branch, inside a real mmseg ASPPHead.

``ASPPHead.image_pool`` is ``AdaptiveAvgPool2d(1)`` followed by ConvModule(conv, norm,
ReLU): its norm layer sees ``(N, C, 1, 1)``. What SN computes there (L = 1 position):

- IN: mean_in = x, var_in = 0 (the unbiased IN variance is undefined for L = 1; SN uses
  the biased one, 0) -> the IN term alone maps every value to ``bias``;
- LN: moments over the C channels of each sample (well defined);
- BN (training): moments over the N samples of the batch -> needs N > 1, otherwise
  ``ValueError: Expected more than 1 value per channel`` exactly like torch's BN;
  in eval the running statistics are used, so batch 1 is fine.
"""
import pytest
import torch
from mmengine.registry import DefaultScope
from torch.testing import assert_close

import sn_mm  # noqa: F401  registers SN / SyncSN
from sn_mm.ops import SwitchableNorm, SyncSwitchableNorm
from tests.reference import reference_sn

IN_CH, CH, NUM_CLASSES = 8, 6, 3


def _head(norm_cfg, seed=0):
    from mmseg.models.decode_heads import ASPPHead
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('mmseg'):
        head = ASPPHead(in_channels=IN_CH, channels=CH, dilations=(1, 2), num_classes=NUM_CLASSES,
                        norm_cfg=norm_cfg, dropout_ratio=0.0, align_corners=False)
    head = head.double()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial mixtures and affine parameters in every SN
        for m in head.modules():
            if isinstance(m, SwitchableNorm):
                for p in (m.weight, m.bias, m.mean_weight, m.var_weight):
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
                if m.using_bn:
                    m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                    m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return head


def _features(batch, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, IN_CH, 7, 9, generator=gen, dtype=torch.float64) * 3 + 1


def _capture_pool_norm(head):
    """Records (input, output) of the image-pool norm layer on every forward.

    ConvModule applies an in-place ReLU after the norm: the hook hands a copy to the
    ReLU so the recorded output stays the norm's own (gradients flow through the copy).
    """
    norm = head.image_pool[1].norm
    seen = []

    def hook(module, args, out):
        seen.append((args[0], out))
        return out.clone()

    return norm, seen, norm.register_forward_hook(hook)


def _reference(norm, x, training):
    return reference_sn(x, norm.weight, norm.bias, norm.mean_weight, norm.var_weight,
                        eps=norm.eps, training=training, running_mean=norm.running_mean,
                        running_var=norm.running_var, unbiased=norm.in_variance == 'unbiased',
                        using_bn=norm.using_bn)[0]


@pytest.mark.parametrize('norm_type', ['SN', 'SyncSN'])
@pytest.mark.parametrize('in_variance', ['unbiased', 'biased'])
def test_image_pool_sn_train_matches_reference_outputs_and_grads(norm_type, in_variance):
    head = _head(dict(type=norm_type, in_variance=in_variance))
    norm, seen, handle = _capture_pool_norm(head)
    assert type(norm) is (SwitchableNorm if norm_type == 'SN' else SyncSwitchableNorm)
    head.train()
    feats = _features(batch=3).requires_grad_()
    logits = head([feats])
    handle.remove()
    (x_pool, y_pool), = seen
    assert x_pool.shape == (3, CH, 1, 1)
    assert torch.isfinite(y_pool).all() and torch.isfinite(logits).all()

    # Output of the SN layer on the 1x1 map equals the literal equations (float64).
    x_ref = x_pool.detach().clone().requires_grad_()
    params = [p.detach().clone().requires_grad_()
              for p in (norm.weight, norm.bias, norm.mean_weight, norm.var_weight)]
    y_ref, mean_bn, var_bn = reference_sn(x_ref, *params, eps=norm.eps, training=True,
                                          unbiased=in_variance == 'unbiased')
    assert_close(y_pool, y_ref, rtol=1e-10, atol=1e-10)

    # Gradients through the whole head are finite; the SN layer's own gradients (input
    # and all four parameters) equal the reference's for the same upstream gradient.
    y_grad = torch.autograd.grad(logits.square().sum(), y_pool, retain_graph=True)[0]
    logits.square().sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert torch.isfinite(feats.grad).all()
    x_in = x_pool.detach().clone().requires_grad_()
    y_own = norm(x_in)
    grads_own = torch.autograd.grad(y_own, [x_in, norm.weight, norm.bias, norm.mean_weight,
                                            norm.var_weight], y_grad)
    grads_ref = torch.autograd.grad(y_ref, [x_ref] + params, y_grad)
    for g_own, g_ref in zip(grads_own, grads_ref):
        assert torch.isfinite(g_own).all()
        assert_close(g_own, g_ref, rtol=1e-8, atol=1e-10)
    # BN-branch moments: over the 3 samples of the batch (per channel).
    assert_close(mean_bn, x_pool.detach().mean(0).flatten())
    assert_close(var_bn, x_pool.detach().var(0, unbiased=False).flatten())


def test_in_term_on_1x1_maps_yields_bias():
    """With all weight on IN, SN maps a 1x1 map to beta (IN variance 0, mean = x)."""
    norm = SwitchableNorm(5).double()
    with torch.no_grad():
        norm.mean_weight.copy_(torch.tensor([50.0, -50.0, -50.0]))
        norm.var_weight.copy_(torch.tensor([50.0, -50.0, -50.0]))
        norm.weight.copy_(torch.arange(1.0, 6.0))
        norm.bias.copy_(torch.linspace(-1, 1, 5))
    x = torch.randn(4, 5, 1, 1, dtype=torch.float64) * 10
    y = norm(x)
    assert_close(y, norm.bias.detach().reshape(1, 5, 1, 1).expand_as(y), atol=1e-6, rtol=0)


@pytest.mark.parametrize('norm_type', ['SN', 'SyncSN'])
def test_image_pool_eval_with_batch_one_uses_running_stats(norm_type):
    head = _head(dict(type=norm_type))
    norm, seen, handle = _capture_pool_norm(head)
    head.eval()
    with torch.no_grad():
        logits = head([_features(batch=1)])
    handle.remove()
    (x_pool, y_pool), = seen
    assert x_pool.shape == (1, CH, 1, 1) and torch.isfinite(logits).all()
    assert_close(y_pool, _reference(norm, x_pool, training=False), rtol=1e-10, atol=1e-10)


def test_image_pool_batch_one_in_training_raises_like_batchnorm():
    """1 image per GPU: the BN branch has 1 value per channel -> same error as torch BN."""
    feats = _features(batch=1)
    sn_head = _head(dict(type='SN')).train()
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        sn_head([feats])
    # Outside a distributed run SyncSN is SN: same error (2 gloo processes with one image
    # each do train: tests/test_seg_syncsn_dist.py).
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        _head(dict(type='SyncSN')).train()([feats])
    bn_head = _head(dict(type='BN')).train()
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        bn_head([feats])
    # Two images: fine (as in every config: >= 2 images per GPU, or SyncSN across GPUs).
    assert torch.isfinite(sn_head([_features(batch=2)])).all()


def test_image_pool_without_bn_branch_trains_with_batch_one():
    """using_bn=False (the official (8,1) setting): IN + LN only, batch 1 is fine."""
    head = _head(dict(type='SN', using_bn=False)).train()
    norm, seen, handle = _capture_pool_norm(head)
    feats = _features(batch=1).requires_grad_()
    logits = head([feats])
    handle.remove()
    (x_pool, y_pool), = seen
    assert_close(y_pool, _reference(norm, x_pool, training=True), rtol=1e-10, atol=1e-10)
    logits.sum().backward()
    assert torch.isfinite(feats.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
