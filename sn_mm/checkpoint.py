"""Safe checkpoint loading for mmengine 0.10.7 on torch >= 2.6.

mmengine 0.10.7 calls ``torch.load(f, map_location=...)`` without ``weights_only``;
torch >= 2.6 then defaults to ``weights_only=True`` and refuses mmengine's own
checkpoints (numpy scalars in ``message_hub``, ``HistoryBuffer`` log scalars), and
mmengine's http loader goes through ``torch.hub.load_state_dict_from_url``, which
passes ``weights_only=False`` explicitly (unsafe unpickling of downloaded files).

This module holds one loader per scheme of mmengine's ``CheckpointLoader`` (:data:`SCHEMES`):
local paths, ``http(s)://``, ``torchvision://``/``modelzoo://``,
``open-mmlab://``/``openmmlab://``, ``mmcls://``, ``pavi://`` and ``s3://``/``petrel://``;
:mod:`sn_mm.compat` registers them with mmengine where the torch version needs it, and
:func:`read_checkpoint` (sn_mm's own reader) always uses them. Every loader ends in
:func:`safe_load`:
``torch.load(..., weights_only=True)`` inside ``torch.serialization.safe_globals``
with exactly the extra globals mmengine writes (:data:`MMENGINE_SAFE_GLOBALS`):

- ``mmengine.logging.HistoryBuffer`` (``message_hub.log_scalars``) and the
  ``getattr(HistoryBuffer, 'min'|'max'|'current'|'mean'|...)`` calls its pickled
  state makes; ``OneCycleLR``'s ``anneal_func`` (``getattr(OneCycleParamScheduler,
  '_annealing_cos'|'_annealing_linear')``, the class name resolving to a
  placeholder that cannot be instantiated or called). ``builtins.getattr`` itself
  is *not* allowed: the name maps to :func:`_restricted_getattr`, which only
  returns those functions and refuses everything else;
- numpy arrays and scalars (``ndarray``, ``dtype`` and the numeric dtype classes,
  ``multiarray._reconstruct``, ``multiarray.scalar``), under both the numpy 2
  (``numpy._core``) and the numpy 1 (``numpy.core``) module names.

The global default (``weights_only``) is never changed and nothing is loaded with
``weights_only=False``. A checkpoint that needs any other global is refused with
:class:`UnsafeCheckpointError` naming the offending global(s).

Once registered, everything that loads through mmengine goes through these loaders:
``Runner``'s ``load_from`` / ``resume`` (``Runner.load_checkpoint``), ``tools/test.py
CHECKPOINT``, ``init_cfg=dict(type='Pretrained', ...)`` (``PretrainedInit`` ->
``load_checkpoint``), ``mmengine.runner.load_checkpoint`` and
``_load_checkpoint_with_prefix``.
"""
import io
import os
import os.path as osp
import pickle
import re
import zipfile
from tempfile import TemporaryDirectory
from typing import Callable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.fileio import get_file_backend
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner import checkpoint as mm_checkpoint

__all__ = ['UnsafeCheckpointError', 'MMENGINE_SAFE_GLOBALS', 'SCHEMES', 'safe_load',
           'read_checkpoint', 'load_from_local', 'load_from_http']


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs a global outside the allowlist; it was not loaded."""


class _MethodOwner:
    """Stands for a class whose functions mmengine pickles as ``getattr(cls, name)``.

    The class name resolves to this placeholder, not to the class: the checkpoint can
    neither instantiate nor call it; only :func:`_restricted_getattr` reads the listed
    functions from it.
    """

    def __new__(cls, *args, **kwargs):
        if not isinstance(cls, type):  # NEWOBJ on the placeholder inside a pickle
            raise UnsafeCheckpointError(f'Unsupported: creating an instance of {cls!r}')
        return super().__new__(cls)

    def __init__(self, cls, names):
        self.cls, self.names = cls, frozenset(names)

    def __call__(self, *args, **kwargs):  # REDUCE on the placeholder inside a pickle
        raise UnsafeCheckpointError(f'Unsupported: calling {self!r}')

    def __repr__(self):
        return f'<{self.cls.__module__}.{self.cls.__qualname__} (functions {sorted(self.names)})>'


def _one_cycle_owner():
    from mmengine.optim.scheduler.param_scheduler import OneCycleParamScheduler
    return _MethodOwner(OneCycleParamScheduler, ('_annealing_cos', '_annealing_linear'))


_ONE_CYCLE = _one_cycle_owner()


def _restricted_getattr(obj, name):
    """Stand-in for ``builtins.getattr`` while unpickling; everything else is refused.

    mmengine pickles two kinds of function references this way:
    ``HistoryBuffer.__getstate__`` stores its statistics methods (public functions
    defined on the class, ``getattr(HistoryBuffer, 'mean')``), and ``OneCycleLR``'s
    state holds ``anneal_func`` (``getattr(OneCycleParamScheduler, '_annealing_cos')``).
    """
    if (obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_')
            and callable(vars(HistoryBuffer).get(name))):
        return vars(HistoryBuffer)[name]
    if isinstance(obj, _MethodOwner) and name in obj.names:
        return getattr(obj.cls, name)
    owner = obj.cls if isinstance(obj, _MethodOwner) else obj
    raise UnsafeCheckpointError(
        f'Unsupported global: builtins.getattr({getattr(owner, "__qualname__", owner)!r}, '
        f'{name!r}); sn_mm only allows getattr(HistoryBuffer, <statistics method>) and '
        'getattr(OneCycleParamScheduler, <annealing function>)')


def _numpy_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    dtype_classes = {type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
        np.uint64, np.float16, np.float32, np.float64, np.longdouble, np.complex64,
        np.complex128)}
    entries: List[Union[Callable, Tuple[Callable, str]]] = [np.ndarray, np.dtype]
    entries += sorted(dtype_classes, key=lambda c: c.__name__)
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        entries.append((multiarray._reconstruct, f'{module}._reconstruct'))
        entries.append((multiarray.scalar, f'{module}.scalar'))
    return entries


#: Extra globals allowed on top of torch's weights_only defaults: what mmengine writes.
MMENGINE_SAFE_GLOBALS: List[Union[Callable, Tuple[Callable, str]]] = [
    HistoryBuffer, (_restricted_getattr, 'builtins.getattr'),
    (_ONE_CYCLE, 'mmengine.optim.scheduler.param_scheduler.OneCycleParamScheduler'),
] + _numpy_globals()

_ALLOWED_NAMES = {entry[1] if isinstance(entry, tuple) else
                  f'{entry.__module__}.{entry.__qualname__}' for entry in MMENGINE_SAFE_GLOBALS}

_GLOBAL_PATTERNS = (
    re.compile(r'Unsupported global: GLOBAL (\S+) was not an allowed global'),
    re.compile(r'Unsupported global: (builtins\.getattr\(.*?\))'),
    re.compile(r'(Trying to call reduce for unrecognized function .*?)(?:\n|$)'),
    re.compile(r'(Can only (?:build|create new object for) .*?)(?:\n|$)'),
    re.compile(r'(Trying to load unsupported GLOBAL \S+ whose module \S+ is blocked)'),
    re.compile(r'WeightsUnpickler error:\s*(?:Unsupported: )?(.+)'),
)


def _offending(message: str) -> str:
    for pattern in _GLOBAL_PATTERNS:
        match = pattern.search(message)
        if match:
            found = match.group(1)
            # torch prints builtins without their module ("print" for builtins.print)
            return found if ('.' in found or ' ' in found) else f'builtins.{found}'
    return message.strip().splitlines()[-1] if message.strip() else 'unknown'


def _all_unsafe_globals(source) -> List[str]:
    """Every global of a zip-format checkpoint outside the allowlist (best effort)."""
    try:
        if isinstance(source, (str, os.PathLike)):
            if not zipfile.is_zipfile(source):
                return []
            names = torch.serialization.get_unsafe_globals_in_checkpoint(source)
        elif isinstance(source, io.BytesIO):
            source.seek(0)
            if not zipfile.is_zipfile(source):
                return []
            source.seek(0)
            names = torch.serialization.get_unsafe_globals_in_checkpoint(source)
        else:
            return []
    except Exception:  # the message below still names the first offender
        return []
    return sorted(set(names) - _ALLOWED_NAMES)


def _refuse(error: Exception, name: str, source) -> UnsafeCheckpointError:
    offender = _offending(str(error))
    others = [g for g in _all_unsafe_globals(source) if g != offender]
    extra = f' (other globals outside the allowlist: {", ".join(others)})' if others else ''
    return UnsafeCheckpointError(
        f'Refusing to load checkpoint {name}: it needs {offender}{extra}, which is not a '
        'tensor/container type nor one of the types mmengine writes (HistoryBuffer, numpy '
        'arrays and scalars). sn_mm loads checkpoints with torch.load(weights_only=True) '
        'and an explicit allowlist (sn_mm.engine.checkpoint.MMENGINE_SAFE_GLOBALS); loading '
        'this file would need unrestricted unpickling, which can run arbitrary code. If you '
        'trust the file, re-save only its tensors (e.g. {"state_dict": ..., "meta": ...} '
        'with plain Python values) and load that.')


def safe_load(f, map_location=None, name: Optional[str] = None):
    """``torch.load(f, weights_only=True)`` with :data:`MMENGINE_SAFE_GLOBALS` allowed.

    ``f`` is a path or a file-like object; ``name`` is used in error messages.
    Raises :class:`UnsafeCheckpointError` if the file needs any other global.
    """
    name = name if name is not None else (str(f) if isinstance(f, (str, os.PathLike))
                                           else '<buffer>')
    with torch.serialization.safe_globals(MMENGINE_SAFE_GLOBALS):
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise _refuse(error, name, f) from None


# --------------------------------------------------------------------- loaders
# Named ``load_from_<backend>`` like mmengine's: CheckpointLoader logs name[10:].

def load_from_local(filename, map_location=None):
    """Local path (also the fallback for any path without a known scheme)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_load(filename, map_location=map_location)


def _download_and_load(url, map_location=None, model_dir=None, progress=False):
    with torch.serialization.safe_globals(MMENGINE_SAFE_GLOBALS):
        try:
            return torch.hub.load_state_dict_from_url(
                url, model_dir=model_dir, map_location=map_location, progress=progress,
                weights_only=True)
        except pickle.UnpicklingError as error:
            raise _refuse(error, url, None) from None


def load_from_http(filename, map_location=None, model_dir=None, progress=os.isatty(0)):
    """``http(s)://``: download into the torch hub cache (rank 0 first), then load safely."""
    rank, world_size = get_dist_info()
    checkpoint = None
    if rank == 0:
        checkpoint = _download_and_load(filename, map_location, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = _download_and_load(filename, map_location, model_dir, progress)
    return checkpoint


def load_from_pavi(filename, map_location=None):
    """``pavi://``: download into a temporary directory, then load safely."""
    if not filename.startswith('pavi://'):
        raise ValueError(f'Expected a path starting with pavi://, got {filename!r}')
    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError('Please install pavi to load checkpoint from modelcloud.')
    model = modelcloud.get(filename[7:])
    with TemporaryDirectory() as tmp_dir:
        downloaded_file = osp.join(tmp_dir, model.name)
        model.download(downloaded_file)
        return safe_load(downloaded_file, map_location=map_location, name=filename)


def load_from_ceph(filename, map_location=None, backend='petrel'):
    """``s3://`` / ``petrel://``: read the bytes through mmengine's file backend."""
    file_backend = get_file_backend(filename, backend_args={'backend': backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        return safe_load(buffer, map_location=map_location, name=filename)


def load_from_torchvision(filename, map_location=None):
    """``torchvision://NAME`` (``modelzoo://`` is deprecated): torchvision's URL table."""
    model_urls = mm_checkpoint.get_torchvision_models()
    if filename.startswith('modelzoo://'):
        print_log('The URL scheme of "modelzoo://" is deprecated, please use '
                  '"torchvision://" instead', logger='current', level=30)
        model_name = filename[11:]
    else:
        model_name = filename[14:]
    if model_name not in model_urls:
        raise KeyError(f'Unknown torchvision model {model_name!r} in {filename!r}')
    return load_from_http(model_urls[model_name], map_location=map_location)


def load_from_openmmlab(filename, map_location=None):
    """``open-mmlab://NAME`` / ``openmmlab://NAME``: mmengine's model-zoo table."""
    model_urls = mm_checkpoint.get_external_models()
    prefix = 'open-mmlab://' if filename.startswith('open-mmlab://') else 'openmmlab://'
    model_name = filename[len(prefix):]
    deprecated = mm_checkpoint.get_deprecated_model_names()
    if model_name in deprecated:
        print_log(f'{prefix}{model_name} is deprecated in favor of '
                  f'{prefix}{deprecated[model_name]}', logger='current', level=30)
        model_name = deprecated[model_name]
    model_url = model_urls[model_name]
    if model_url.startswith(('http://', 'https://')):
        return load_from_http(model_url, map_location=map_location)
    local = osp.join(mm_checkpoint._get_mmengine_home(), model_url)
    if not osp.isfile(local):
        raise FileNotFoundError(f'{local} can not be found.')
    return safe_load(local, map_location=map_location)


def load_from_mmcls(filename, map_location=None):
    """``mmcls://NAME``: mmcls model zoo, keeping the ``backbone.`` weights."""
    model_urls = mm_checkpoint.get_mmcls_models()
    checkpoint = load_from_http(model_urls[filename[8:]], map_location=map_location)
    return mm_checkpoint._process_mmcls_checkpoint(checkpoint)


#: mmengine 0.10.7's scheme prefixes (exact strings, so each replaces its original).
SCHEMES = (
    ('', load_from_local),
    (('http://', 'https://'), load_from_http),
    ('pavi://', load_from_pavi),
    ([r'(\S+\:)?s3://', r'(\S+\:)?petrel://'], load_from_ceph),
    (('modelzoo://', 'torchvision://'), load_from_torchvision),
    (('open-mmlab://', 'openmmlab://'), load_from_openmmlab),
    ('mmcls://', load_from_mmcls),
)


def _loader_for(path: str) -> Callable:
    """The loader of :data:`SCHEMES` for ``path``, chosen as mmengine chooses (longest
    matching prefix first; the local loader for paths without a known scheme)."""
    prefixes = [(prefix, loader) for entry, loader in SCHEMES
                for prefix in ([entry] if isinstance(entry, str) else entry)]
    for prefix, loader in sorted(prefixes, key=lambda p: len(p[0]), reverse=True):
        if re.match(prefix, path) is not None:
            return loader
    return load_from_local


def read_checkpoint(path: str, map_location='cpu') -> Mapping:
    """The checkpoint reader of sn_mm's own tools and analysis: a local path or any
    mmengine scheme (``https://``, ``torchvision://``, ...), always through the safe
    loaders above (whether or not :mod:`sn_mm.compat` registered them with mmengine).

    Raises ``FileNotFoundError`` for a missing local file, :class:`UnsafeCheckpointError`
    for a file that needs a global outside the allowlist, and ``ValueError`` when the file
    does not hold a dict (a state dict or a checkpoint holding one).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f'expected a checkpoint path, got {type(path).__name__}')
    path = os.fspath(path)
    if '://' not in path and not osp.isfile(osp.expanduser(path)):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist (or is not a file)')
    checkpoint = _loader_for(path)(path, map_location=map_location)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'{path}: expected a dict (a state dict or a checkpoint holding '
                         f'"state_dict"), got {type(checkpoint).__name__}')
    return checkpoint
