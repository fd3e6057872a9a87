"""Every SN option is validated: the error names the layer type, the key, the value and
what is expected (issue 20, item 1). On the old main ``using_moving_average='False'``
silently became True, ``using_bn='no'`` built 3 logits and ``last_gamma='yes'`` passed."""
import re

import numpy as np
import pytest
import torch

from sn_mm.ops import (SparseSwitchableNorm, SwitchableNorm, SyncSparseSwitchableNorm,
                       SyncSwitchableNorm)
from sn_mm.ops import options

LAYERS = [SwitchableNorm, SyncSwitchableNorm, SparseSwitchableNorm, SyncSparseSwitchableNorm]
BOOL_KEYS = ['using_moving_average', 'using_bn', 'last_gamma']


@pytest.mark.parametrize('layer', LAYERS)
@pytest.mark.parametrize('key', BOOL_KEYS)
@pytest.mark.parametrize('value', ['False', 'no', 'yes', 0, 1, None, 1.0, [True]])
def test_bool_options_must_be_bools(layer, key, value):
    with pytest.raises(TypeError) as info:
        layer(4, **{key: value})
    message = str(info.value)
    assert message.startswith(f'{layer.__name__}: {key} must be a bool (True or False)')
    assert repr(value) in message and type(value).__name__ in message


@pytest.mark.parametrize('layer', LAYERS)
@pytest.mark.parametrize('key', BOOL_KEYS)
@pytest.mark.parametrize('value', [True, False, np.bool_(True), torch.tensor(False)])
def test_bool_options_accept_bools(layer, key, value):
    built = layer(4, **{key: value})
    assert getattr(built, key) is bool(value)


@pytest.mark.parametrize('layer', LAYERS)
@pytest.mark.parametrize('kwargs,error,expected', [
    (dict(num_features=0), ValueError, 'num_features must be a positive int (>= 1), got 0 (int)'),
    (dict(num_features=4.0), TypeError, 'num_features must be a positive int (>= 1), got 4.0'),
    (dict(num_features=True), TypeError, 'num_features must be a positive int (>= 1), got True'),
    (dict(eps=0), ValueError, 'eps must be a positive number (> 0), got 0 (int)'),
    (dict(eps=-1e-5), ValueError, 'eps must be a positive number (> 0), got -1e-05'),
    (dict(eps='1e-5'), TypeError, "eps must be a positive number (> 0), got '1e-5' (str)"),
    (dict(eps=float('nan')), ValueError, 'eps must be a positive number (> 0), got nan'),
    (dict(momentum=1.1), ValueError, 'momentum must be in [0, 1] (a real number), got 1.1'),
    (dict(momentum=-0.1), ValueError, 'momentum must be in [0, 1] (a real number), got -0.1'),
    (dict(momentum=None), TypeError, 'momentum must be in [0, 1] (a real number), got None'),
    (dict(momentum=True), TypeError, 'momentum must be in [0, 1] (a real number), got True'),
    (dict(in_variance='sample'), ValueError,
     "in_variance must be one of ('unbiased', 'biased'), got 'sample' (str)"),
    (dict(in_variance=None), ValueError, "in_variance must be one of ('unbiased', 'biased')"),
])
def test_other_options_name_key_value_and_expectation(layer, kwargs, error, expected):
    kwargs = dict(kwargs)
    num_features = kwargs.pop('num_features', 4)
    with pytest.raises(error, match=re.escape(f'{layer.__name__}: {expected}')):
        layer(num_features, **kwargs)


@pytest.mark.parametrize('layer', LAYERS)
def test_valid_options_are_kept_with_python_types(layer):
    built = layer(np.int64(5), eps=np.float32(1e-3), momentum=0, in_variance='biased')
    assert built.num_features == 5 and type(built.num_features) is int
    assert type(built.eps) is float and abs(built.eps - 1e-3) < 1e-9
    assert built.momentum == 0.0 and built.in_variance == 'biased'


def test_norm_cfg_through_the_registry_names_the_key():
    """The path a config takes: mmcv's build_norm_layer with a string from a config."""
    mmcv_cnn = pytest.importorskip('mmcv.cnn')
    import sn_mm  # noqa: F401
    with pytest.raises(TypeError, match=r"SwitchableNorm: using_bn must be a bool .*'no'"):
        mmcv_cnn.build_norm_layer(dict(type='SN', using_bn='no'), 8)


# ------------------------------------------------------ the validators themselves
@pytest.mark.parametrize('value,ok', [(1, True), (7, True), (0, False), (-3, False),
                                      (2.0, False), (True, False), ('3', False)])
def test_check_positive_int(value, ok):
    if ok:
        assert options.check_positive_int('GN', 'num_groups', value) == value
    else:
        with pytest.raises(options.OptionError, match=r"^GN: num_groups must be a positive int"):
            options.check_positive_int('GN', 'num_groups', value)


@pytest.mark.parametrize('value,ok', [(('IN', 'LN', 'BN'), True), ('IN', False),
                                      (('IN', 'LN', 'GN'), True), (['IN'], False)])
def test_check_choice_for_tuples(value, ok):
    choices = [('IN', 'LN', 'BN'), ('IN', 'LN', 'GN')]
    if ok:
        assert options.check_choice(SwitchableNorm, 'branches', value, choices) == value
    else:
        with pytest.raises(ValueError, match=r'^SwitchableNorm: branches must be one of'):
            options.check_choice(SwitchableNorm, 'branches', value, choices)


@pytest.mark.parametrize('value,low,high,ok', [
    (3, 0, 5, True), (0, 0, 5, True), (5, 0, 5, True), (6, 0, 5, False), (-1, 0, None, False),
    (10 ** 9, 0, None, True), (2.5, 0, 5, False), (False, 0, 5, False)])
def test_check_int(value, low, high, ok):
    if ok:
        assert options.check_int('L', 'k', value, low, high) == value
    else:
        with pytest.raises(options.OptionError, match=r'^L: k must be an int'):
            options.check_int('L', 'k', value, low, high)


def test_check_number_open_and_closed_bounds():
    assert options.check_number('L', 'p', 0.5, 0, 1, low_closed=False, high_closed=False) == 0.5
    for bad in (0, 1, float('inf')):
        with pytest.raises(options.OptionError, match=r'^L: p must be in \(0, 1\)'):
            options.check_number('L', 'p', bad, 0, 1, low_closed=False, high_closed=False)
    assert options.check_number('L', 'r', 0, low=0) == 0.0
    with pytest.raises(options.OptionError, match=r'^L: r must be a number >= 0, got -1'):
        options.check_number('L', 'r', -1, low=0)


def test_errors_are_value_errors_and_type_errors_where_the_type_is_wrong():
    with pytest.raises(ValueError):
        options.check_bool('L', 'b', 'True')
    assert issubclass(options.OptionTypeError, TypeError)
    assert issubclass(options.OptionTypeError, ValueError)
