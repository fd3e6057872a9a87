"""``SNFiniteCheckHook``: the opt-in NaN/Inf check of :mod:`sn_mm.ops.finite_check` for
mmengine runs (``custom_hooks = [dict(type='SNFiniteCheckHook')]``). It watches the
model's SN layers from ``before_run`` to ``after_run``; without the hook nothing is checked.
"""
from mmengine.hooks import Hook

from ..ops.finite_check import watch_finite

__all__ = ['SNFiniteCheckHook']


class SNFiniteCheckHook(Hook):
    """Raise :class:`~sn_mm.ops.finite_check.NonFiniteError` naming the first SN layer that
    sees a NaN/Inf input or statistic, in training, validation and testing."""

    priority = 'VERY_HIGH'

    def __init__(self):
        self._watch = None

    def before_run(self, runner) -> None:
        self._watch = watch_finite(runner.model)

    def after_run(self, runner) -> None:
        if self._watch is not None:
            self._watch.remove()
            self._watch = None
