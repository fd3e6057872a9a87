"""Deployment: turn trained SN/SSN/SW models into models built only of plain, fixed layers.

``import sn_mm.deploy`` needs torch only (no mm* package):

- :func:`to_fixed_norms` (:mod:`sn_mm.deploy.convert`) converts a model and reports, per
  layer, what it became and the largest output deviation on a batch;
- :mod:`sn_mm.deploy.fixed_norms`: the fixed layers it uses where a one-hot choice has no
  torch equivalent (IN and LN with SN's Bessel correction, any other fixed mixture);
- :mod:`sn_mm.deploy.mm` (mmengine; imported by :mod:`sn_mm.registry` and
  ``tools/deploy_sn.py``, not by this package) converts a checkpoint of an mmdet/mmseg
  config and writes a checkpoint plus a config that ``tools/test.py`` runs: its model is
  ``dict(type='FixedNormModel', model=<the original model>, layers=..., conv_biases=...)``,
  which builds the original model and gives it the converted structure.

Switchable Whitening layers whose instance branches have weight 0 (``sw_type=1``) are a
fixed per-group affine map in eval mode: :func:`to_fixed_norms` folds them into the conv
that feeds them, or makes them a grouped 1x1 conv; others depend on the sample and are
refused with an error naming the layer, as EN layers are.
"""
from .convert import (Conversion, LayerReport, apply_plan, build_fixed, conv_norm_pairs,
                      fold_bn_into_conv, format_report, plan_of, spec_of, to_fixed_norms)

__all__ = ['Conversion', 'LayerReport', 'apply_plan', 'build_fixed', 'conv_norm_pairs',
           'fold_bn_into_conv', 'format_report', 'plan_of', 'spec_of', 'to_fixed_norms']
