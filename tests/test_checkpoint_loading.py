"""Safe checkpoint loading (weights_only=True + mmengine allowlist) through a real Runner."""
import functools
import http.server
import io
import pickle
import threading

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

import sn_mm  # noqa: F401  installs the safe loaders
from sn_mm import checkpoint as safe_ckpt
from sn_mm.checkpoint import UnsafeCheckpointError, safe_load
from tests.toy_runner import make_runner


def _touch(path):  # what an "arbitrary pickled object" would run on load
    open(path, 'w').close()
    return 'ran'


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


class GetattrPayload:
    def __reduce__(self):  # getattr on an allowed class, but not a statistics method
        return (getattr, (HistoryBuffer, '_set_default_statistics'))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Uninterrupted 6-iteration run (checkpoints at 3 and 6) and a run resumed at 3."""
    root = tmp_path_factory.mktemp('resume')
    full = make_runner(root / 'full')
    full.train()
    resumed = make_runner(root / 'resumed', load_from=str(root / 'full' / 'iter_3.pth'),
                          resume=True)
    resumed.train()
    return root, full, resumed


def test_every_mmengine_scheme_is_safe():
    for path, expected in [('/x/a.pth', safe_ckpt.load_from_local),
                           ('https://h/a.pth', safe_ckpt.load_from_http),
                           ('http://h/a.pth', safe_ckpt.load_from_http),
                           ('torchvision://resnet50', safe_ckpt.load_from_torchvision),
                           ('modelzoo://resnet50', safe_ckpt.load_from_torchvision),
                           ('open-mmlab://resnet50_caffe', safe_ckpt.load_from_openmmlab),
                           ('openmmlab://resnet50_caffe', safe_ckpt.load_from_openmmlab),
                           ('mmcls://resnet50', safe_ckpt.load_from_mmcls),
                           ('pavi://a/b.pth', safe_ckpt.load_from_pavi),
                           ('s3://bucket/a.pth', safe_ckpt.load_from_ceph),
                           ('cluster:s3://bucket/a.pth', safe_ckpt.load_from_ceph),
                           ('petrel://bucket/a.pth', safe_ckpt.load_from_ceph)]:
        assert CheckpointLoader._get_checkpoint_loader(path) is expected, path
    assert set(CheckpointLoader._schemes.values()) <= {s[1] for s in safe_ckpt.SCHEMES}


def test_resume_equals_uninterrupted_run(trained):
    root, full, resumed = trained
    ckpt = root / 'full' / 'iter_3.pth'
    # torch's default (weights_only=True without the allowlist) refuses mmengine's file:
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt)
    loaded = safe_load(str(ckpt))
    assert isinstance(loaded['message_hub']['runtime_info']['best_score'], np.floating)
    assert any(isinstance(v, HistoryBuffer)
               for v in loaded['message_hub']['log_scalars'].values())

    assert resumed.iter == full.iter == 6
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert list(a) == list(b)
    for name in a:  # parameters, SN logits and running statistics, BN buffers
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    assert any('sn1.running_mean' == n for n in a) and any('sn2.mean_weight' == n for n in a)
    opt_a = full.optim_wrapper.optimizer.state_dict()['state']
    opt_b = resumed.optim_wrapper.optimizer.state_dict()['state']
    for key in opt_a:
        torch.testing.assert_close(opt_b[key]['momentum_buffer'], opt_a[key]['momentum_buffer'],
                                   rtol=0, atol=0)
    assert (resumed.param_schedulers[0].last_step == full.param_schedulers[0].last_step)
    assert resumed.optim_wrapper.get_lr() == full.optim_wrapper.get_lr()


def test_load_from_for_evaluation(trained):
    """``load_from`` without resume (the path ``tools/test.py CHECKPOINT`` takes)."""
    root, full, _ = trained
    runner = make_runner(root / 'eval', load_from=str(root / 'full' / 'iter_6.pth'))
    metrics = runner.test()
    assert 0.0 <= metrics['acc'] <= 1.0
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(runner.model.state_dict()[name], value, rtol=0, atol=0)


def test_arbitrary_object_is_refused(trained, tmp_path):
    root, full, _ = trained
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save(dict(state_dict=full.model.state_dict(), meta=dict(note=Payload(str(marker)))),
               path)
    with pytest.raises(UnsafeCheckpointError, match=r'tests\.test_checkpoint_loading\._touch'):
        CheckpointLoader.load_checkpoint(str(path))
    runner = make_runner(tmp_path / 'wd')
    with pytest.raises(UnsafeCheckpointError, match='Refusing to load checkpoint'):
        runner.load_checkpoint(str(path))
    assert not marker.exists()

    torch.save(dict(meta=GetattrPayload()), tmp_path / 'getattr.pth')
    with pytest.raises(UnsafeCheckpointError, match=r'builtins\.getattr\(.*HistoryBuffer'):
        safe_load(str(tmp_path / 'getattr.pth'))
    torch.save(dict(meta=print), tmp_path / 'builtin.pth')
    with pytest.raises(UnsafeCheckpointError, match=r'builtins\.print'):
        safe_load(str(tmp_path / 'builtin.pth'))


def test_legacy_format_and_numpy1_names(tmp_path):
    """Pre-1.6 (non-zip) files, and numpy arrays pickled by numpy 1 (``numpy.core``)."""
    buffer = HistoryBuffer()
    buffer.update(2.0)
    buffer.update(4.0)
    obj = dict(state_dict={'w': torch.arange(4.0)}, best=np.float64(0.5), hist=buffer,
               counts=np.arange(3, dtype=np.int64), flag=np.bool_(True))
    raw = io.BytesIO()
    torch.save(obj, raw, _use_new_zipfile_serialization=False)
    data = raw.getvalue()
    assert b'numpy._core.multiarray\n' in data
    old = data.replace(b'numpy._core.multiarray\n', b'numpy.core.multiarray\n')
    for name, blob in [('new.pth', data), ('numpy1.pth', old)]:
        (tmp_path / name).write_bytes(blob)
        loaded = CheckpointLoader.load_checkpoint(str(tmp_path / name))
        assert torch.equal(loaded['state_dict']['w'], torch.arange(4.0))
        assert loaded['best'] == 0.5 and loaded['hist'].mean() == 3.0
        assert loaded['counts'].tolist() == [0, 1, 2] and bool(loaded['flag'])


def test_http_scheme_downloads_and_loads_safely(trained, tmp_path, monkeypatch):
    root, full, _ = trained
    serve = tmp_path / 'serve'
    serve.mkdir()
    (serve / 'good.pth').write_bytes((root / 'full' / 'iter_3.pth').read_bytes())
    torch.save(dict(x=Payload(str(tmp_path / 'pwned'))), serve / 'evil.pth')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(serve))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f'http://127.0.0.1:{server.server_address[1]}'
        loaded = CheckpointLoader.load_checkpoint(f'{base}/good.pth', map_location='cpu')
        torch.testing.assert_close(loaded['state_dict']['sn1.running_var'],
                                   safe_load(str(root / 'full' / 'iter_3.pth'))
                                   ['state_dict']['sn1.running_var'])
        with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
            CheckpointLoader.load_checkpoint(f'{base}/evil.pth')
    finally:
        server.shutdown()
        server.server_close()
    assert not (tmp_path / 'pwned').exists()


class _CallScheduler:
    def __reduce__(self):  # try to call mmengine's OneCycleParamScheduler on load
        from mmengine.optim.scheduler.param_scheduler import OneCycleParamScheduler
        return (OneCycleParamScheduler, (None,))


def test_one_cycle_scheduler_state_round_trips_but_cannot_be_called(tmp_path):
    from mmengine.optim import OneCycleLR
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    scheduler = OneCycleLR(optimizer, eta_max=0.1, total_steps=10, anneal_strategy='linear')
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    torch.save(dict(param_schedulers=[scheduler.state_dict()]), tmp_path / 'ok.pth')
    state = safe_load(str(tmp_path / 'ok.pth'))['param_schedulers'][0]
    fresh = OneCycleLR(optimizer, eta_max=0.1, total_steps=10)  # 'cos' by default
    fresh.load_state_dict(state)
    assert fresh.anneal_func is scheduler.anneal_func and fresh.last_step == 3
    torch.save(dict(x=_CallScheduler()), tmp_path / 'call.pth')
    with pytest.raises(UnsafeCheckpointError, match='calling <mmengine.optim'):
        safe_load(str(tmp_path / 'call.pth'))
