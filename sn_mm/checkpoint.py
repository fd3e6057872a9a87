"""Every checkpoint sn_mm reads goes through this module: safe loading, integrity checks,
the URL schemes, unwrapping and the layout of SN/BN state dicts.

Readers: :func:`read_checkpoint` (paths and URLs) is used by the analysis
(``sn_mm.analysis``), the converter (``sn_mm.checkpoint_convert``), ONNX export
(``sn_mm.apis.export``), deploy (``sn_mm.deploy.mm``), ``init_cfg=dict(type='Pretrained')``
(``sn_mm.engine.pretrained``) and ``tools/test.py``; mmengine's ``Runner`` (``load_from``,
``--resume``) reaches the same loaders through :data:`SCHEMES` (:mod:`sn_mm.compat`).

**Integrity** (:func:`verify_file`, run by :func:`safe_load` before anything is unpickled):

- a zip-format checkpoint (``torch.save`` since torch 1.6) must be a complete zip archive
  holding ``<archive>/data.pkl``, and every entry must match the CRC-32 stored for it in
  the archive (torch does not check them): :class:`CorruptCheckpointError` names the file
  and the damaged entry (``archive/data/3`` is the storage of one tensor);
- a file that is neither a zip archive nor torch's legacy (pre-1.6) format, e.g. an empty,
  truncated, text or random file, is :class:`NotACheckpointError` ("not a (valid) PyTorch
  checkpoint", with the file's name), not a security problem;
- a file whose name carries a hash, ``NAME-<hex>.pth`` with 8 to 64 hex digits (OpenMMLab's
  and torchvision's published-checkpoint convention, written by ``tools/publish_model.py``),
  must have a SHA-256 starting with those digits (:class:`ChecksumMismatchError`).

**Safe loading**: mmengine 0.10.7 calls ``torch.load(f, map_location=...)`` without
``weights_only``;
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
import hashlib
import io
import os
import os.path as osp
import pickle
import re
import tarfile
import zipfile
import zlib
from collections import OrderedDict
from tempfile import TemporaryDirectory
from typing import Callable, Container, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.fileio import get_file_backend
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner import checkpoint as mm_checkpoint

from .ops import pool as pool_table

__all__ = ['UnsafeCheckpointError', 'NotACheckpointError', 'CorruptCheckpointError',
           'ChecksumMismatchError', 'MMENGINE_SAFE_GLOBALS', 'SCHEMES', 'verify_file',
           'hash_in_name', 'sha256_of', 'safe_load', 'read_checkpoint', 'read_state_dict',
           'load_from_local', 'load_from_http', 'unwrap_state_dict', 'strip_prefix',
           'strip_key', 'find_sn_layers', 'find_bn_layers', 'check_sn_layer', 'is_sparse_layer',
           'logit_pool', 'parse_branches', 'branches_arg', 'sn_layer_pool',
           'coverage', 'CheckpointCoverageError', 'check_coverage', 'check_model_coverage',
           'publish_checkpoint']


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs a global outside the allowlist; it was not loaded."""


class NotACheckpointError(ValueError):
    """The file is not a (valid) PyTorch checkpoint: empty, text, random or truncated."""


class CorruptCheckpointError(NotACheckpointError):
    """A zip-format checkpoint whose data does not match its CRC-32s (damaged bytes)."""


class ChecksumMismatchError(NotACheckpointError):
    """A file named ``NAME-<hash>.pth`` whose SHA-256 does not start with ``<hash>``."""


# ------------------------------------------------------------------ integrity
#: ``torch.save(..., _use_new_zipfile_serialization=False)`` files start with this pickle.
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
#: ``NAME-<hex>.pth``: the hash prefix of a published checkpoint (mmdet, torchvision).
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.pth$')
_CHUNK = 1 << 24


def hash_in_name(name: str) -> Optional[str]:
    """The SHA-256 prefix in a published checkpoint's file name (``x-1a2b3c4d.pth``), or None."""
    match = _HASH_IN_NAME.search(osp.basename(str(name)))
    return match.group(1) if match else None


def sha256_of(path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f'{module}.{name}')


def _is_legacy(stream) -> bool:
    """True if the stream starts with torch's legacy magic number (read with no globals)."""
    try:
        return _NoGlobals(stream).load() == _LEGACY_MAGIC
    except Exception:  # any pickle/EOF/value error: not the legacy format
        return False


def _not_a_checkpoint(name: str, why: str) -> NotACheckpointError:
    return NotACheckpointError(
        f'{name} is not a (valid) PyTorch checkpoint: {why}. Expected a file written by '
        'torch.save (a zip archive holding data.pkl, or the legacy pre-1.6 format); check '
        'the path and whether the download or copy finished.')


def _verify_zip(stream, name: str) -> None:
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise _not_a_checkpoint(name, f'damaged or truncated zip archive ({err})') from None
    with archive:
        infos = archive.infolist()
        if not any(i.filename == 'data.pkl' or i.filename.endswith('/data.pkl') for i in infos):
            raise _not_a_checkpoint(name, 'a zip archive without data.pkl (not written by '
                                    'torch.save)')
        for info in infos:
            if info.CRC == 0 and info.file_size > 0:
                continue  # written with torch.serialization.config.save.compute_crc32=False
            try:
                with archive.open(info) as entry:
                    while entry.read(_CHUNK):
                        pass  # zipfile compares the CRC-32 when the entry is read to its end
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                raise CorruptCheckpointError(
                    f'{name} is damaged: zip entry {info.filename!r} does not match the CRC-32 '
                    f'stored for it ({err}); the file was changed or truncated after '
                    'torch.save wrote it. Re-download or re-copy it.') from None


def verify_file(f, name: Optional[str] = None) -> None:
    """Check a checkpoint before it is unpickled (see the module docstring).

    ``f`` is a path or a seekable binary file object (rewound afterwards). Raises
    :class:`NotACheckpointError` (empty, text, random, truncated),
    :class:`CorruptCheckpointError` (a zip entry whose CRC-32 does not match) or
    :class:`ChecksumMismatchError` (``NAME-<hash>.pth`` whose SHA-256 does not match).
    """
    if isinstance(f, (str, os.PathLike)):
        name = name if name is not None else os.fspath(f)
        expected = hash_in_name(name)
        if expected is not None:
            actual = sha256_of(f)
            if not actual.startswith(expected):
                raise ChecksumMismatchError(
                    f'{name}: the file name carries the SHA-256 prefix {expected} (published-'
                    f'checkpoint convention NAME-<sha256[:8]>.pth) but the file\'s SHA-256 is '
                    f'{actual}: the file is damaged or not the published one. Re-download it '
                    '(or, if that suffix is not a hash, rename the file).')
        with open(f, 'rb') as stream:
            _verify_stream(stream, name)
        return
    name = name if name is not None else '<buffer>'
    start = f.tell()
    try:
        _verify_stream(f, name)
    finally:
        f.seek(start)


def _verify_stream(stream, name: str) -> None:
    start = stream.tell()
    head = stream.read(4)
    stream.seek(start)
    if not head:
        raise _not_a_checkpoint(name, 'the file is empty')
    if zipfile.is_zipfile(stream):
        stream.seek(start)
        _verify_zip(stream, name)
        return
    stream.seek(start)
    if head.startswith(b'PK'):
        raise _not_a_checkpoint(name, 'a zip archive without its end (truncated?)')
    if _is_legacy(stream):
        return
    stream.seek(start)
    try:
        if tarfile.is_tarfile(stream):  # torch's oldest (tar) format
            return
    except (OSError, ValueError):
        pass
    stream.seek(start)
    text = head.isascii() and all(32 <= c < 127 or c in b'\t\n\r' for c in head)
    raise _not_a_checkpoint(name, 'it looks like a text file' if text else
                            'unknown content (neither a zip archive nor torch\'s legacy format)')


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


def _names_a_global(message: str) -> bool:
    """True when torch refused a global (a security refusal), not a malformed pickle."""
    if any(pattern.search(message) for pattern in _GLOBAL_PATTERNS[:-1]):
        return True
    match = _GLOBAL_PATTERNS[-1].search(message)
    detail = match.group(0) if match else message
    return 'Unsupported: ' in detail or bool(re.search(r'global|reduce|build|call|instance',
                                                        detail, re.IGNORECASE))


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
        'and an explicit allowlist (sn_mm.checkpoint.MMENGINE_SAFE_GLOBALS); loading '
        'this file would need unrestricted unpickling, which can run arbitrary code. If you '
        'trust the file, re-save only its tensors (e.g. {"state_dict": ..., "meta": ...} '
        'with plain Python values) and load that.')


def safe_load(f, map_location=None, name: Optional[str] = None):
    """``torch.load(f, weights_only=True)`` with :data:`MMENGINE_SAFE_GLOBALS` allowed.

    ``f`` is a path or a file-like object; ``name`` is used in error messages.
    Raises :class:`UnsafeCheckpointError` if the file needs any other global, and the
    errors of :func:`verify_file` (checked first) for a damaged or foreign file.
    """
    name = name if name is not None else (str(f) if isinstance(f, (str, os.PathLike))
                                           else '<buffer>')
    verify_file(f, name)
    with torch.serialization.safe_globals(MMENGINE_SAFE_GLOBALS):
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            if not _names_a_global(str(error)):
                raise _not_a_checkpoint(name, f'its pickle is damaged ({_offending(str(error))})') \
                    from None
            raise _refuse(error, name, f) from None
        except (EOFError, IndexError, RuntimeError, ValueError, KeyError) as error:
            raise _not_a_checkpoint(name, f'{type(error).__name__}: {error}') from None


# --------------------------------------------------------------------- loaders
# Named ``load_from_<backend>`` like mmengine's: CheckpointLoader logs name[10:].

def load_from_local(filename, map_location=None):
    """Local path (also the fallback for any path without a known scheme)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_load(filename, map_location=map_location)


def _download_and_load(url, map_location=None, model_dir=None, progress=False):
    """Download ``url`` into the torch hub cache (as ``torch.hub.load_state_dict_from_url``
    does: ``<hub>/checkpoints/<basename>``), then :func:`safe_load` the cached file, so the
    integrity checks, including the hash in a published file's name, apply to downloads."""
    from urllib.parse import urlparse
    if model_dir is None:
        model_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(urlparse(url).path))
    if not osp.exists(cached):
        torch.hub.download_url_to_file(url, cached, hash_prefix=hash_in_name(cached),
                                       progress=progress)
    return safe_load(cached, map_location=map_location, name=f'{url} (cached as {cached})')


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


def read_state_dict(path: str, map_location='cpu', prefix: str = 'module.') -> 'OrderedDict':
    """:func:`read_checkpoint` + :func:`unwrap_state_dict` + :func:`strip_prefix`: the
    model's tensors of any accepted layout, keys without the DataParallel ``module.``."""
    return strip_prefix(unwrap_state_dict(read_checkpoint(path, map_location)), prefix)


# --------------------------------------------------------------------- layouts
# Accepted layouts: mmengine ``{'meta': ..., 'state_dict': {...}}``; the official SN
# ImageNet files ``{'state_dict': {'module.layer1.0.sn1.mean_weight': ...}, 'epoch': ...}``;
# ``{'model': state_dict}``; a bare state dict. Every leading ``module.`` is removed.

def unwrap_state_dict(checkpoint: Mapping) -> Mapping:
    """The state dict inside a checkpoint dict (``state_dict`` or ``model`` entry, or itself)."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError('expected a checkpoint dict or a state dict, got '
                        f'{type(checkpoint).__name__}')
    for key in ('state_dict', 'model'):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            return inner
    return checkpoint


def strip_key(key: str, prefix: str = 'module.') -> str:
    """``key`` without its leading ``prefix`` (repeated ones too)."""
    while prefix and isinstance(key, str) and key.startswith(prefix):
        key = key[len(prefix):]
    return key


def strip_prefix(state_dict: Mapping, prefix: str = 'module.') -> 'OrderedDict':
    """``state_dict`` with every leading ``prefix`` removed from each key that has it.

    ``prefix='module.'`` undoes DataParallel/DDP wrapping (``module.module.x`` -> ``x``);
    an empty ``prefix`` leaves the keys as they are.
    """
    return OrderedDict((strip_key(k, prefix), v) for k, v in state_dict.items())


def _key(name: str, attr: str) -> str:
    return f'{name}.{attr}' if name else attr


def find_sn_layers(state_dict: Mapping) -> List[str]:
    """Names of the SN layers of a state dict, in its order: every prefix ``P`` with both
    ``P.mean_weight`` and ``P.var_weight`` (``''`` for keys without a prefix)."""
    names = []
    for key in state_dict:
        if isinstance(key, str) and (key.endswith('.mean_weight') or key == 'mean_weight'):
            name = key[:-len('mean_weight')].rstrip('.')
            if _key(name, 'var_weight') in state_dict:
                names.append(name)
    return names


_BN_KEYS = ('weight', 'bias', 'running_mean', 'running_var')
_SN_BUFFERS = ('running_mean', 'running_var')


def find_bn_layers(state_dict: Mapping) -> List[str]:
    """Names of BN layers: 1-D ``weight``/``bias``/``running_mean``/``running_var``, no logits."""
    names = []
    for key in state_dict:
        if isinstance(key, str) and (key.endswith('.running_mean') or key == 'running_mean'):
            name = key[:-len('running_mean')].rstrip('.')
            if all(_key(name, k) in state_dict and state_dict[_key(name, k)].dim() == 1
                   for k in _BN_KEYS) and _key(name, 'mean_weight') not in state_dict:
                names.append(name)
    return names


def is_sparse_layer(state_dict: Mapping, name: str) -> bool:
    """True for a Sparse SN layer (it saves a ``radius``: shares are sparsestmax, not softmax)."""
    return _key(name, 'radius') in state_dict


def parse_branches(text: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """A pool from its names, ``'IN,LN,BN,GN'`` (the tools' ``--branches``) or a sequence,
    validated against :mod:`sn_mm.ops.pool` (known, distinct, at least two)."""
    names = [b.strip() for b in text.split(',')] if isinstance(text, str) else list(text)
    return pool_table.resolve_pool(names, 'BN' in names, owner='branches')


def branches_arg(text: str) -> Tuple[str, ...]:
    """argparse ``type`` of the tools' ``--branches IN,LN,BN,GN``: :func:`parse_branches`,
    its error as the option's error message."""
    import argparse

    try:
        return parse_branches(text)
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def logit_pool(count: int, branches: Optional[Sequence[str]] = None,
               layer: Optional[str] = None) -> Tuple[str, ...]:
    """The pool (names of :mod:`sn_mm.ops.pool`, in logit order) of an SN layer saved with
    ``count`` importance logits per vector.

    A state dict holds the logits but not the names: a layer whose count matches
    ``branches`` has that pool; otherwise 2 and 3 logits are the official pools
    (:data:`~sn_mm.ops.pool.OFFICIAL_POOLS`), and any other count is an error naming the
    layer, the count and the ``branches`` option (``--branches`` of the tools).
    """
    if branches is not None:
        pool = parse_branches(branches)
        if len(pool) == count:
            return pool
    for pool in pool_table.OFFICIAL_POOLS:
        if len(pool) == count:
            return pool
    where = f'SN layer {layer!r}: ' if layer is not None else ''
    official = ' or '.join(f'{len(p)} ([{", ".join(p)}])'
                           for p in sorted(pool_table.OFFICIAL_POOLS, key=len))
    given = (f'; branches={tuple(branches)!r} has {len(parse_branches(branches))}'
             if branches is not None else '')
    raise ValueError(f'{where}expected {official} importance logits (an official SN pool) or '
                     f'as many as the branches given, got {count}{given}; for another pool '
                     "give the layer's branches, e.g. branches=('IN', 'LN', 'BN', 'GN') "
                     '(--branches IN,LN,BN,GN in tools/analyze_sn.py and '
                     'tools/convert_checkpoint.py print)')


def sn_layer_pool(state_dict: Mapping, name: str,
                  branches: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    """The pool of the SN layer ``name`` of a state dict; its ``mean_weight`` and
    ``var_weight`` must hold as many logits.

    The candidates are ``branches`` (when it has as many names as the layer has logits),
    then the official pool of that count (:func:`logit_pool`). When the layer's ``weight``
    and ``bias`` are there (a whole layer, not only its logits), the first candidate that
    has a batch branch exactly when the layer has running statistics is taken, so
    ``branches=('IN', 'LN', 'GN')`` leaves the 3 logits of an ordinary layer in the same
    file ``[IN, LN, BN]``, and 3 logits without statistics are not read as ``[IN, LN, BN]``;
    with no such candidate it is an error naming the layer and the option. With only the
    logits (no ``weight``/``bias``) the first candidate is taken.
    """
    logits = state_dict[_key(name, 'mean_weight')]
    var_logits = state_dict[_key(name, 'var_weight')]
    count = logits.numel()
    if var_logits.numel() != count:
        official = ' or '.join(f'{len(p)} ([{", ".join(p)}])' for p in pool_table.OFFICIAL_POOLS)
        raise ValueError(f'SN layer {name!r}: {_key(name, "mean_weight")} has {count} '
                         f'logits but {_key(name, "var_weight")} has {var_logits.numel()}; '
                         f'expected equal lengths, one logit per branch of the pool ({official} '
                         'for the official pools)')
    candidates = []
    if branches is not None and len(parse_branches(branches)) == count:
        candidates.append(parse_branches(branches))
    candidates += [p for p in pool_table.OFFICIAL_POOLS if len(p) == count and p not in candidates]
    if not candidates:
        logit_pool(count, branches, name)  # raises: the count needs branches
    if not all(_key(name, attr) in state_dict for attr in ('weight', 'bias')):
        return candidates[0]  # only some of the layer's tensors: its logits decide
    has_stats = any(_key(name, b) in state_dict for b in _SN_BUFFERS)
    for pool in candidates:
        if pool_table.uses_batch(pool) == has_stats:
            return pool
    read = ' or '.join(str(list(p)) for p in candidates)
    raise ValueError(
        f'SN layer {name!r}: {count} logits read as {read}, a pool '
        f'{"without" if has_stats else "with"} a BN branch, but the layer has '
        f'{"" if has_stats else "no "}running statistics; the file is not a consistent SN '
        "layout, or the layer has another pool: give its branches, e.g. branches=('IN', "
        "'LN', 'GN') (--branches IN,LN,GN in tools/analyze_sn.py and "
        'tools/convert_checkpoint.py print)')


def check_sn_layer(state_dict: Mapping, name: str,
                   branches: Optional[Sequence[str]] = None) -> int:
    """Validate one SN layer's tensors (logits of a pool: :func:`sn_layer_pool`; affine and
    statistics sizes; running statistics exactly when the pool has a batch branch);
    returns its channel count. Raises ``ValueError`` naming the layer."""
    pool = sn_layer_pool(state_dict, name, branches)
    count = len(pool)
    weight = state_dict.get(_key(name, 'weight'))
    if weight is None or _key(name, 'bias') not in state_dict:
        raise ValueError(f'SN layer {name!r} has logits but no weight/bias')
    channels = weight.numel()
    using_bn = pool_table.uses_batch(pool)
    for attr in ('bias',) + (_SN_BUFFERS if using_bn else ()):
        value = state_dict.get(_key(name, attr))
        if value is None:
            raise ValueError(f'SN layer {name!r} has {count} logits {list(pool)} but no {attr}')
        if value.numel() != channels:
            raise ValueError(f'SN layer {name!r}: {attr} has {value.numel()} values, '
                             f'expected {channels} (the size of its weight)')
    return channels


# -------------------------------------------------------------------- coverage
#: Counters that are not weights: a checkpoint without them still covers the model.
IGNORED_MISSING = ('num_batches_tracked',)


class CheckpointCoverageError(ValueError):
    """A checkpoint does not hold every tensor of the model (or holds one of another shape)."""


def coverage(model_state: Mapping, state_dict: Mapping,
             reshaped: Container[str] = ()) -> Tuple[List[str], List[str]]:
    """``(missing, mismatched)``: model keys absent from ``state_dict`` (counters such as
    ``num_batches_tracked`` excepted) and keys present with another shape (as
    ``'key: checkpoint (a, b) vs model (c, d)'``); keys in ``reshaped`` only need the same
    number of elements (SN layers reshape the official (1, C, 1, 1) tensors on load)."""
    missing, mismatched = [], []
    for key, value in model_state.items():
        if key.rpartition('.')[2] in IGNORED_MISSING:
            continue
        if key not in state_dict:
            missing.append(key)
            continue
        other = state_dict[key]
        if hasattr(value, 'shape') and hasattr(other, 'shape') and \
                tuple(other.shape) != tuple(value.shape) and not (
                    key in reshaped and other.numel() == value.numel()):
            mismatched.append(f'{key}: checkpoint {tuple(other.shape)} vs model '
                              f'{tuple(value.shape)}')
    return missing, mismatched


def _listed(items: List[str], limit: int = 12) -> str:
    shown = ', '.join(items[:limit])
    return shown + (f', ... ({len(items)} in all)' if len(items) > limit else '')


def check_coverage(model_state: Mapping, state_dict: Mapping, source: str,
                   what: str = 'model', allow: str = '', reshaped: Container[str] = ()) -> int:
    """Raise :class:`CheckpointCoverageError` unless ``state_dict`` holds every tensor of
    ``model_state`` with its shape; returns the number of tensors covered. ``allow`` names
    the option that permits partial loading (quoted in the message)."""
    missing, mismatched = coverage(model_state, state_dict, reshaped)
    if missing or mismatched:
        total = sum(1 for k in model_state if k.rpartition('.')[2] not in IGNORED_MISSING)
        parts = [f'{source} does not cover the {what}: it holds '
                 f'{total - len(missing) - len(mismatched)} of its {total} tensors']
        if missing:
            parts.append(f'missing ({len(missing)}): {_listed(missing)}')
        if mismatched:
            parts.append(f'shape mismatch ({len(mismatched)}): {_listed(mismatched)}')
        if allow:
            parts.append(f'if partial loading is intended, {allow}')
        raise CheckpointCoverageError('; '.join(parts))
    return len(model_state)


# ------------------------------------------------------------------ publishing
#: What a published checkpoint keeps (training state: optimizer, schedulers, message hub,
#: RNG states, EMA copies, is dropped, as mmdet's ``tools/model_converters/publish_model.py``).
PUBLISHED_KEYS = ('meta', 'state_dict')


def publish_checkpoint(src: str, out: str) -> str:
    """Write ``src``'s weights as ``<out without .pth>-<sha256[:8]>.pth``; returns the path.

    The file holds ``meta`` and ``state_dict`` only (``ema_*`` and ``data_preprocessor.*``
    keys dropped), in torch's zip format, so readers check both its CRC-32s and the hash
    in its name (:func:`verify_file`).
    """
    checkpoint = read_checkpoint(src)
    state_dict = OrderedDict((k, v) for k, v in unwrap_state_dict(checkpoint).items()
                             if not k.startswith(('ema_', 'data_preprocessor.')))
    published = dict(state_dict=state_dict)
    if isinstance(checkpoint.get('meta'), Mapping):
        published['meta'] = dict(checkpoint['meta'])
    stem = out[:-len('.pth')] if out.endswith('.pth') else out
    if hash_in_name(f'{stem}.pth') is not None:
        raise ValueError(f'{out!r} already ends in a hash-like suffix; give the name without it')
    tmp = f'{stem}.pth.tmp'
    torch.save(published, tmp)
    digest = sha256_of(tmp)
    final = f'{stem}-{digest[:8]}.pth'
    os.replace(tmp, final)
    return final


def check_model_coverage(module, state_dict: Mapping, source: str, what: Optional[str] = None,
                         allow: str = '') -> int:
    """:func:`check_coverage` for an ``nn.Module``, with SN's loading rules: an SN layer's
    ``weight``/``bias``/``running_*`` may come in the official (1, C, 1, 1) / (1, C, 1)
    shapes, and a Sparse SN layer whose logits come from an SN checkpoint (no
    ``radius``/``*_fixed`` in the file) keeps its own sparse buffers."""
    from .ops import SwitchableNorm
    from .ops.sparse_switchable_norm import SPARSE_BUFFERS, _SparseMixin
    reshaped, optional = set(), set()
    for name, layer in module.named_modules():
        if not isinstance(layer, SwitchableNorm):
            continue
        prefix = f'{name}.' if name else ''
        reshaped.update(prefix + k for k in ('weight', 'bias') + _SN_BUFFERS)
        if isinstance(layer, _SparseMixin) and not any(prefix + b in state_dict
                                                       for b in SPARSE_BUFFERS):
            optional.update(prefix + b for b in SPARSE_BUFFERS)
    required = OrderedDict((k, v) for k, v in module.state_dict().items() if k not in optional)
    return check_coverage(required, state_dict, source, what or type(module).__name__, allow,
                          reshaped)
