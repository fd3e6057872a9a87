"""Validation of a norm layer's options (``norm_cfg`` keys), pure torch/Python.

Each check returns the value (converted where stated) or raises an :class:`OptionError`
(a ``ValueError``; a ``TypeError`` where the value has the wrong type) whose message names
the layer type, the key, the value and what was expected, e.g.::

    SwitchableNorm: using_moving_average must be a bool (True or False), got 'False' (str)

Conventions: a *bool* is exactly ``True``/``False`` (``numpy.bool_`` and 0-d bool tensors
are accepted, but not strings, ``None`` or the ints 0/1: ``bool('False')`` is ``True``);
an *int* is an ``int`` (not a ``bool``); a *number* is an ``int`` or ``float`` (not a
``bool``), finite unless the range says otherwise. These functions hold no state and
import nothing from mmengine; any layer type can call them from its constructor.
"""
import math
import numbers
from typing import Any, Optional, Sequence

__all__ = ['OptionError', 'OptionTypeError', 'check_bool', 'check_positive_int',
           'check_int', 'check_number', 'check_choice', 'check_input']


class OptionError(ValueError):
    """A layer option has a value outside what the layer accepts."""


class OptionTypeError(OptionError, TypeError):
    """A layer option has the wrong type (also a ``TypeError``)."""


def _owner(layer) -> str:
    if isinstance(layer, str):
        return layer
    return layer.__name__ if isinstance(layer, type) else type(layer).__name__


def _shown(value: Any) -> str:
    return f'{value!r} ({type(value).__name__})'


def _fail(layer, key: str, value: Any, expected: str, kind=OptionError):
    return kind(f'{_owner(layer)}: {key} must be {expected}, got {_shown(value)}')


def _is_bool(value) -> bool:
    if isinstance(value, bool):
        return True
    if type(value).__module__ == 'numpy' and type(value).__name__ in ('bool_', 'bool'):
        return True
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.dim() == 0


def check_bool(layer, key: str, value: Any) -> bool:
    """``value`` as a Python ``bool``; only ``True``/``False`` (or numpy/0-d tensor bools)."""
    if not _is_bool(value):
        raise _fail(layer, key, value, 'a bool (True or False)', OptionTypeError)
    return bool(value)


def check_int(layer, key: str, value: Any, low: Optional[int] = None,
              high: Optional[int] = None) -> int:
    """An ``int`` (not a bool) in ``[low, high]`` (either bound may be ``None``)."""
    bounds = _range_text(low, high, True, True)
    expected = 'an int' + (f' in {bounds}' if bounds else '')
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(layer, key, value, expected, OptionTypeError)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _fail(layer, key, value, expected)
    return int(value)


def check_positive_int(layer, key: str, value: Any) -> int:
    """An ``int`` >= 1 (channel counts, group counts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        kind = OptionError if isinstance(value, numbers.Integral) and not isinstance(
            value, bool) else OptionTypeError
        raise _fail(layer, key, value, 'a positive int (>= 1)', kind)
    return int(value)


def _range_text(low, high, low_closed, high_closed) -> str:
    if low is None and high is None:
        return ''
    if high is None:
        return f'{">=" if low_closed else ">"} {low}'
    if low is None:
        return f'{"<=" if high_closed else "<"} {high}'
    return f'{"[" if low_closed else "("}{low}, {high}{"]" if high_closed else ")"}'


def check_number(layer, key: str, value: Any, low: Optional[float] = None,
                 high: Optional[float] = None, low_closed: bool = True,
                 high_closed: bool = True, hint: str = '') -> float:
    """A real number (int or float, not a bool, finite) in the given range, as ``float``.

    ``low``/``high`` may be ``None`` (unbounded); ``low_closed``/``high_closed`` say whether
    the bounds themselves are allowed; ``hint`` is appended to the message.
    """
    if low == 0 and high is None:
        expected = 'a positive number (> 0)' if not low_closed else 'a number >= 0'
    elif low is not None and high is not None:
        expected = f'in {_range_text(low, high, low_closed, high_closed)} (a real number)'
    else:
        expected = f'a finite number {_range_text(low, high, low_closed, high_closed)}'.rstrip()
    suffix = f'; {hint}' if hint else ''
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionTypeError(f'{_owner(layer)}: {key} must be {expected}, got '
                              f'{_shown(value)}{suffix}')
    number = float(value)
    bad = not math.isfinite(number)
    if low is not None:
        bad = bad or (number < low if low_closed else number <= low)
    if high is not None:
        bad = bad or (number > high if high_closed else number >= high)
    if bad:
        raise OptionError(f'{_owner(layer)}: {key} must be {expected}, got '
                          f'{_shown(value)}{suffix}')
    return number


def check_choice(layer, key: str, value: Any, choices: Sequence) -> Any:
    """``value`` if it is one of ``choices`` (compared with ``==``, same type family)."""
    for choice in choices:
        if type(value) is type(choice) and value == choice:
            return value
    raise _fail(layer, key, value, f'one of {tuple(choices)!r}')


def check_input(layer, x) -> None:
    """A norm layer's input: floating point ``(N, layer.num_features, *spatial)`` with at
    least one spatial dimension, none of them empty (``N`` may be 0)."""
    owner = type(layer).__name__
    if x.dim() < 3:
        raise ValueError(
            f'{owner} expects input of shape (N, C, *spatial) with at least '
            f'one spatial dimension, got shape {tuple(x.shape)} ({x.dim()}D)')
    if x.shape[1] != layer.num_features:
        raise ValueError(
            f'{owner}({layer.num_features}) got input with {x.shape[1]} '
            f'channels (shape {tuple(x.shape)}); expected {layer.num_features}')
    if any(s == 0 for s in x.shape[2:]):
        raise ValueError(f'{owner} got an empty spatial size, shape {tuple(x.shape)}')
    if not x.is_floating_point():
        raise TypeError(f'{owner} expects a floating-point input, got {x.dtype}')
