"""Convert an mmdet/mmseg SN/SSN checkpoint into fixed layers; a config ``tools/test.py`` runs.

The written config is the original one with its model wrapped::

    model = dict(type='FixedNormModel', model=<original model dict>,
                 layers=[dict(name='backbone.layer1.0.sn1', spec=dict(type=...)), ...],
                 conv_biases=['backbone.conv1', ...])

``FixedNormModel`` (root ``MODELS``, a builder function) builds the original model in the
current scope (mmdet, mmseg, ...) and applies the plan (:func:`sn_mm.deploy.apply_plan`):
the result *is* the detector/segmentor class itself, with plain layers where SN was, so
mmengine's test loop, data preprocessor and evaluators work unchanged, and the written
checkpoint loads into it without missing or unexpected keys.
"""
import copy
import os
import os.path as osp
from typing import Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from .convert import Conversion, apply_plan, check_no_exemplar_norm, to_fixed_norms


def build_fixed_norm_model(model: dict, layers: Sequence[dict] = (),
                           conv_biases: Sequence[str] = (), **defaults):
    """Build ``model`` (in the current default scope), then give it the converted structure.

    Other keys are defaults for ``model`` (mmengine's Runner adds the config's top-level
    ``data_preprocessor`` this way, as mmseg configs have one).
    """
    model = dict(model)
    for key, value in defaults.items():
        model.setdefault(key, value)
    net = MODELS.build(model)
    return apply_plan(net, layers, conv_biases)




def max_abs_difference(a, b) -> Optional[float]:
    """Largest |a - b| over the tensors of two nested outputs (lists, tuples, dicts,
    mmengine data elements); ``inf`` where they differ in structure, shape, or in the
    values of non-float tensors (e.g. a different number of detections or labels);
    None if there is no tensor at all."""
    inf = float('inf')
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return inf
        if not a.is_floating_point():
            return 0.0 if torch.equal(a, b) else inf
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if hasattr(a, 'to_dict') and hasattr(b, 'to_dict'):
        a, b = a.to_dict(), b.to_dict()
    pairs = []
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return inf
        pairs = [(a[k], b[k]) for k in a]
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return inf
        pairs = list(zip(a, b))
    values = [v for v in (max_abs_difference(x, y) for x, y in pairs) if v is not None]
    return max(values) if values else None


def load_model(config: str, checkpoint: str, cfg_options: Optional[dict] = None):
    """(cfg, model in eval mode) for an mm config and checkpoint (strict, safe loading)."""
    from sn_mm.checkpoint import read_state_dict

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.load_state_dict(read_state_dict(checkpoint), strict=True)
    return cfg, model.eval()


def first_test_batch(cfg):
    """The first batch of the config's test dataloader (in-process loading)."""
    from mmengine.runner import Runner

    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    return next(iter(Runner.build_dataloader(loader_cfg)))


def deploy_checkpoint(config: str, checkpoint: str, out: str, tol: float = 0.0,
                      cfg_options: Optional[dict] = None, check: bool = True) -> dict:
    """Convert ``checkpoint`` of ``config``; write ``out`` (.pth) and its config (.py).

    With ``check`` the first test batch measures every layer's deviation and the whole
    model's (``test_step`` outputs, original vs converted). Returns a summary dict.
    """
    if not out.endswith('.pth'):
        raise ValueError(f'--out must be a .pth file, got {out!r}')
    cfg, model = load_model(config, checkpoint, cfg_options)
    check_no_exemplar_norm(dict(model.named_modules()))  # before loading any data
    batch = first_test_batch(cfg) if check else None
    forward = (lambda m: m.test_step(batch)) if check else None
    conversion: Conversion = to_fixed_norms(model, tol=tol, forward=forward)
    model_deviation = None
    if check:
        with torch.no_grad():
            model_deviation = max_abs_difference(model.test_step(batch),
                                                 conversion.model.test_step(batch))
    plan = conversion.plan
    meta = dict(sn_mm_fixed_norms=dict(
        source_config=osp.abspath(config), source_checkpoint=osp.abspath(checkpoint), tol=tol,
        layers=[r.to_dict() for r in conversion.layers], model_max_deviation=model_deviation))
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    torch.save(dict(meta=meta, state_dict=conversion.model.state_dict()), out)

    new_cfg = copy.deepcopy(cfg)
    new_cfg.model = dict(type='FixedNormModel', model=cfg.model, **plan)
    imports = dict(new_cfg.get('custom_imports') or dict(imports=[]))
    names = list(imports.get('imports', []))
    if 'sn_mm' not in names:
        imports['imports'] = names + ['sn_mm']
    new_cfg.custom_imports = imports
    new_cfg.load_from = osp.abspath(out)
    config_out = osp.splitext(out)[0] + '.py'
    new_cfg.dump(config_out)
    return dict(checkpoint=out, config=config_out, conversion=conversion,
                model_max_deviation=model_deviation)
