"""What each SN layer learned: ratio extraction, depth order, tables and paper-style plots.

See ``docs/analysis.md``. Matplotlib is imported only when plotting (Agg canvas).
"""
from .layers import block_of, depth_order, stage_of
from .ratios import (BRANCHES, LayerRatios, average_shares, columns_of, extract_ratios,
                     find_sn_layers, ratios_from_checkpoint, ratios_from_model,
                     ratios_from_state_dict, share_of, softmax_shares, stage_averages,
                     strip_prefix, unwrap_state_dict)
from .table import format_table, rows, write_table


def plot_ratios(*args, **kwargs):
    """Lazy wrapper of :func:`sn_mm.analysis.plot.plot_ratios` (imports matplotlib)."""
    from .plot import plot_ratios as _plot
    return _plot(*args, **kwargs)


__all__ = ['BRANCHES', 'LayerRatios', 'average_shares', 'block_of', 'columns_of',
           'depth_order', 'extract_ratios', 'find_sn_layers', 'format_table', 'plot_ratios',
           'ratios_from_checkpoint', 'ratios_from_model', 'ratios_from_state_dict', 'rows',
           'share_of', 'softmax_shares', 'stage_averages', 'stage_of', 'strip_prefix',
           'unwrap_state_dict', 'write_table']
