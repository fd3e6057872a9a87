"""An independent, literal float64 implementation of the SN equations (plain autograd).

Written straight from the paper's formulas as the official code states them
(E[x^2] form, IN variance first), sharing no code with ``sn_mm.ops``.
"""
import torch


def reference_sn(x, weight, bias, mean_logits, var_logits, *, eps=1e-5, training=True,
                 running_mean=None, running_var=None, unbiased=True, using_bn=True,
                 gn_groups=None):
    """Returns ``(y, batch_mean_bn, batch_var_bn)`` (the last two None in eval or without BN).

    ``gn_groups``: a GroupNorm branch over that many channel groups, the last logit.
    """
    n, c = x.shape[:2]
    xf = x.reshape(n, c, -1)
    length = xf.shape[-1]
    mean_in = xf.mean(-1, keepdim=True)
    if unbiased and length > 1:
        var_in = ((xf - mean_in) ** 2).sum(-1, keepdim=True) / (length - 1)
    else:
        var_in = ((xf - mean_in) ** 2).sum(-1, keepdim=True) / length
    mean_ln = mean_in.mean(1, keepdim=True)
    temp = var_in + mean_in ** 2
    var_ln = temp.mean(1, keepdim=True) - mean_ln ** 2
    mean_w = torch.softmax(mean_logits, 0)
    var_w = torch.softmax(var_logits, 0)
    mean = mean_w[0] * mean_in + mean_w[1] * mean_ln
    var = var_w[0] * var_in + var_w[1] * var_ln
    mean_bn = var_bn = None
    if using_bn:
        if training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = temp.mean(0, keepdim=True) - mean_bn ** 2
            bn_mean, bn_var = mean_bn, var_bn
        else:
            bn_mean = running_mean.reshape(1, c, 1)
            bn_var = running_var.reshape(1, c, 1)
        mean = mean + mean_w[2] * bn_mean
        var = var + var_w[2] * bn_var
    if gn_groups is not None:
        grouped = (n, gn_groups, c // gn_groups)
        mean_gn = mean_in.reshape(grouped).mean(-1, keepdim=True)
        var_gn = temp.reshape(grouped).mean(-1, keepdim=True) - mean_gn ** 2
        expand = (lambda t: t.expand(grouped).reshape(n, c, 1))
        mean = mean + mean_w[-1] * expand(mean_gn)
        var = var + var_w[-1] * expand(var_gn)
    y = (xf - mean) / torch.sqrt(var + eps)
    y = y * weight.reshape(1, c, 1) + bias.reshape(1, c, 1)
    squeeze = (lambda t: None if t is None else t.reshape(c))
    return y.reshape(x.shape), squeeze(mean_bn), squeeze(var_bn)
