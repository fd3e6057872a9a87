"""Deployment: turn trained SN/SSN models into models built only of plain, fixed layers.

- :func:`to_fixed_norms` (pure torch) converts a model and reports, per layer, what it
  became and the largest output deviation on a batch;
- :mod:`sn_mm.deploy.mm` (mmengine) converts a checkpoint of an mmdet/mmseg config and
  writes a checkpoint plus a config that ``tools/test.py`` runs: its model is
  ``dict(type='FixedNormModel', model=<the original model>, layers=..., conv_biases=...)``,
  which builds the original model and gives it the converted structure;
- :func:`sw_to_convs` (pure torch): eval-mode batch-branch SW layers as grouped 1x1 convs,
  folded into the preceding conv where possible.
"""
from . import mm  # noqa: F401  (registers FixedNormModel in the root MODELS)
from .convert import (Conversion, LayerReport, apply_plan, build_fixed, conv_norm_pairs,
                      fold_bn_into_conv, format_report, plan_of, spec_of, to_fixed_norms)
from .sw import sw_to_convs

__all__ = ['Conversion', 'LayerReport', 'apply_plan', 'build_fixed', 'conv_norm_pairs',
           'fold_bn_into_conv', 'format_report', 'plan_of', 'spec_of', 'to_fixed_norms',
           'sw_to_convs']
