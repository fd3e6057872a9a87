"""Damaged, foreign and published checkpoints at every entry point (issue 20, item 2).

On the old main, 64 flipped bytes inside a tensor loaded without an error everywhere
(torch does not check the zip CRCs), a random file was reported as a security problem
and an empty or text file gave a bare ``EOFError``/``IndexError`` without the file name.
"""
import hashlib
import os
import pickle
import re
import zipfile

import pytest
import torch
from mmengine.runner import CheckpointLoader

import sn_mm  # noqa: F401  installs the safe loaders
from sn_mm.checkpoint import (ChecksumMismatchError, CorruptCheckpointError,
                              NotACheckpointError, UnsafeCheckpointError, hash_in_name,
                              publish_checkpoint, read_checkpoint, read_state_dict, safe_load,
                              verify_file)
from tests.cli import run_tool
from tests.toy_runner import ToySNModel, make_runner


def _flip_in_largest_tensor(src, dst, count=64):
    """Copy ``src`` to ``dst`` with ``count`` bytes inverted inside the largest storage."""
    data = bytearray(open(src, 'rb').read())
    with zipfile.ZipFile(src) as archive:
        info = max((i for i in archive.infolist() if '/data/' in i.filename),
                   key=lambda i: i.file_size)
        raw = data[info.header_offset:info.header_offset + 30]
        name_len, extra_len = int.from_bytes(raw[26:28], 'little'), int.from_bytes(raw[28:30],
                                                                                     'little')
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 3
    assert info.file_size > count
    for k in range(count):
        data[start + k] ^= 0xFF
    open(dst, 'wb').write(bytes(data))
    return info.filename


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('integrity')
    model = ToySNModel()
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p)
    good = root / 'good.pth'
    torch.save(dict(meta=dict(note='x'), state_dict=model.state_dict()), good)
    bad = root / 'damaged.pth'
    entry = _flip_in_largest_tensor(good, bad)
    foreign = {}
    for name, blob in [('empty', b''), ('text', b'model weights: see README\n'),
                       ('random', os.urandom(4096)), ('truncated', good.read_bytes()[:2000])]:
        foreign[name] = root / f'{name}.pth'
        foreign[name].write_bytes(blob)
    return dict(root=root, good=good, bad=bad, entry=entry, model=model, foreign=foreign)


def _entry_points():
    """Every way sn_mm or mmengine reads a checkpoint file: ``(name, callable(path))``."""
    from sn_mm.analysis import extract_ratios
    from sn_mm.apis.export import load_weights
    from sn_mm.engine.pretrained import SNPretrainedInit

    def resume(path):
        make_runner(os.path.join(os.path.dirname(path), 'wd_resume')).resume(str(path))

    return [
        ('safe_load', lambda p: safe_load(str(p))),
        ('read_checkpoint', read_checkpoint),
        ('read_state_dict', read_state_dict),
        ('CheckpointLoader (load_from, tools/test.py)',
         lambda p: CheckpointLoader.load_checkpoint(str(p), map_location='cpu')),
        ('Runner.resume (--resume)', resume),
        ('init_cfg=Pretrained', lambda p: SNPretrainedInit(checkpoint=str(p))(ToySNModel())),
        ('analyze_sn (extract_ratios)', lambda p: extract_ratios(str(p))),
        ('export_onnx (load_weights)', lambda p: load_weights(ToySNModel(), str(p))),
    ]


ENTRY_NAMES = [name for name, _ in _entry_points()]


@pytest.mark.parametrize('entry', ENTRY_NAMES)
def test_flipped_bytes_in_a_tensor_are_an_error_naming_file_and_entry(files, entry):
    load = dict(_entry_points())[entry]
    with pytest.raises(CorruptCheckpointError) as info:
        load(files['bad'])
    message = str(info.value)
    assert str(files['bad']) in message and repr(files['entry']) in message
    assert 'CRC-32' in message


@pytest.mark.parametrize('entry', ENTRY_NAMES)
@pytest.mark.parametrize('kind', ['empty', 'text', 'random', 'truncated'])
def test_foreign_files_are_not_a_checkpoint_not_a_security_problem(files, entry, kind):
    load = dict(_entry_points())[entry]
    path = files['foreign'][kind]
    with pytest.raises(NotACheckpointError,
                       match=re.escape(f'{path} is not a (valid) PyTorch checkpoint')) as info:
        load(path)
    assert not isinstance(info.value, pickle.UnpicklingError)
    assert 'Refusing' not in str(info.value)


def test_the_good_file_loads_everywhere(files):
    for name, load in _entry_points():
        if not name.startswith('Runner.resume'):  # needs a training checkpoint (below)
            load(files['good'])  # no error
    torch.testing.assert_close(read_state_dict(files['good'])['sn1.weight'],
                               files['model'].sn1.weight.detach(), rtol=0, atol=0)


def test_legacy_format_is_still_read_and_its_damage_is_not_a_security_issue(tmp_path):
    path = tmp_path / 'legacy.pth'
    torch.save({'w': torch.arange(6.0)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load(str(path))['w'], torch.arange(6.0))
    data = bytearray(path.read_bytes())
    data[40:60] = b'\x0d' * 20  # opcodes torch's unpickler does not know
    path.write_bytes(bytes(data))
    with pytest.raises(NotACheckpointError, match='its pickle is damaged'):
        safe_load(str(path))


def test_cli_tools_report_a_damaged_file_without_a_traceback(files):
    out = run_tool('convert_checkpoint.py', '--print', files['bad'], expect_rc=1)
    assert 'Traceback' not in out and f'error: {files["bad"]} is damaged' in out


def test_buffers_are_checked_too(files):
    import io
    with pytest.raises(CorruptCheckpointError, match=r"<buffer> is damaged: zip entry"):
        safe_load(io.BytesIO(files['bad'].read_bytes()))
    buffer = io.BytesIO(files['good'].read_bytes())
    verify_file(buffer)
    assert buffer.tell() == 0


# ------------------------------------------------------------ published files
def test_publish_model_writes_the_sha256_prefix_and_drops_training_state(files, tmp_path):
    runner_dir = files['root'] / 'trained'
    make_runner(runner_dir, max_iters=3, checkpoint_interval=3, val_interval=3).train()
    src = runner_dir / 'iter_3.pth'
    assert 'optimizer' in safe_load(str(src))
    out = run_tool('publish_model.py', src, tmp_path / 'toy_sn.pth', stdout_only=True).strip()
    digest = hashlib.sha256(open(out, 'rb').read()).hexdigest()
    assert out == str(tmp_path / f'toy_sn-{digest[:8]}.pth') and hash_in_name(out) == digest[:8]
    published = safe_load(out)
    assert set(published) == {'meta', 'state_dict'}
    for key, value in safe_load(str(src))['state_dict'].items():
        assert torch.equal(published['state_dict'][key], value)


def test_a_published_name_is_verified_before_use(files, tmp_path):
    path = publish_checkpoint(str(files['good']), str(tmp_path / 'pub'))
    assert read_state_dict(path).keys() == files['model'].state_dict().keys()
    # the same bytes under another hash, and a damaged copy under the right one
    wrong = tmp_path / 'pub-0123abcd.pth'
    wrong.write_bytes(open(path, 'rb').read())
    damaged = tmp_path / 'copy' / os.path.basename(path)
    damaged.parent.mkdir()
    _flip_in_largest_tensor(path, damaged, count=1)
    for bad in (wrong, damaged):
        for name, load in _entry_points():
            with pytest.raises(ChecksumMismatchError, match=re.escape(str(bad))):
                load(bad)
    with pytest.raises(ChecksumMismatchError, match='SHA-256 prefix 0123abcd'):
        verify_file(str(wrong))


@pytest.mark.parametrize('name,expected', [
    ('faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth', '047c8118'),
    ('resnet50-0676ba61.pth', '0676ba61'), ('epoch_12.pth', None), ('iter_3.pth', None),
    ('model-XYZ12345.pth', None), ('a-0676ba61.pth.tmp', None)])
def test_hash_in_name(name, expected):
    assert hash_in_name(f'/some/dir/{name}') == expected


def test_a_malicious_pickle_is_still_refused_after_the_integrity_checks(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ('true',))
    path = tmp_path / 'evil.pth'
    torch.save(dict(meta=Payload()), path)
    verify_file(str(path))  # intact zip: the refusal is the safe unpickler's
    with pytest.raises(UnsafeCheckpointError, match=r'Refusing to load checkpoint .*evil\.pth'):
        read_checkpoint(str(path))


@pytest.mark.parametrize('tool,extra,rc', [('test.py', (), 2),
                                           ('deploy_sn.py', ('--out', 'OUT'), 1)])
def test_test_and_deploy_tools_exit_non_zero_naming_the_damaged_file(files, tmp_path, tool,
                                                                    extra, rc):
    """The old main evaluated/converted the damaged file and exited 0."""
    from tests.cli import ROOT
    config = f'{ROOT}/configs/mask_rcnn_demo/mask-rcnn_r18_fpn_sn-all_coco-demo.py'
    args = [str(tmp_path / 'out.pth') if a == 'OUT' else a for a in extra]
    if tool == 'test.py':
        args += ['--work-dir', str(tmp_path / 'wd')]
    out = run_tool(tool, config, files['bad'], *args, expect_rc=rc)
    assert f'error: {files["bad"]} is damaged: zip entry' in out and 'Traceback' not in out
