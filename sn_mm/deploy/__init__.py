"""Deployment: turn trained SN/SSN models into models built only of plain, fixed layers.

``import sn_mm.deploy`` needs torch only (no mm* package):

- :func:`to_fixed_norms` (:mod:`sn_mm.deploy.convert`) converts a model and reports, per
  layer, what it became and the largest output deviation on a batch;
- :mod:`sn_mm.deploy.fixed_norms`: the fixed layers it uses where a one-hot choice has no
  torch equivalent (IN and LN with SN's Bessel correction, any other fixed mixture);
- :mod:`sn_mm.deploy.mm` (mmengine; imported by :mod:`sn_mm.registry` and
  ``tools/deploy_sn.py``, not by this package) converts a checkpoint of an mmdet/mmseg
  config and writes a checkpoint plus a config that ``tools/test.py`` runs: its model is
  ``dict(type='FixedNormModel', model=<the original model>, layers=..., conv_biases=...)``,
  which builds the original model and gives it the converted structure;
- :func:`sw_to_convs` (pure torch): eval-mode batch-branch SW layers as grouped 1x1 convs,
  folded into the preceding conv where possible.
"""
from .convert import (Conversion, LayerReport, apply_plan, build_fixed, conv_norm_pairs,
                      fold_bn_into_conv, format_report, plan_of, spec_of, to_fixed_norms)
from .sw import sw_to_convs

__all__ = ['Conversion', 'LayerReport', 'apply_plan', 'build_fixed', 'conv_norm_pairs',
           'fold_bn_into_conv', 'format_report', 'plan_of', 'spec_of', 'to_fixed_norms',
           'sw_to_convs']
