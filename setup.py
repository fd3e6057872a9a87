"""sn_mm: Switchable Normalization for MMDetection / MMSegmentation."""
import os
import os.path as osp
import sys

from setuptools import find_packages, setup


def extension_kwargs():
    """The optional CPU kernel (sn_mm._ext), built like mmcv's ops.

    Set SN_MM_WITH_OPS=0 to skip it; sn_mm then uses its pure-torch path (same math).
    """
    if os.getenv('SN_MM_WITH_OPS', '1') == '0':
        return {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    # at::parallel_for is an OpenMP region compiled into *this* library: without
    # -fopenmp it silently runs on one thread. Linked this way the extension shares
    # the OpenMP runtime torch has already loaded (same soname, libgomp.so.1).
    compile_args, link_args = ['-O3'], []
    if torch.backends.openmp.is_available() and sys.platform.startswith('linux'):
        compile_args.append('-fopenmp')
        link_args.append('-fopenmp')
    else:
        compile_args.append('-fopenmp-simd')
    ext = CppExtension('sn_mm._ext', ['sn_mm/ops/csrc/sn_cpu.cpp'],
                       extra_compile_args=compile_args, extra_link_args=link_args)
    return dict(ext_modules=[ext], cmdclass={'build_ext': BuildExtension})


def read_version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'sn_mm', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='sn_mm',
    version=read_version(),
    description='Switchable Normalization (SN, SyncSN) as OpenMMLab norm layers',
    long_description=open(osp.join(osp.dirname(__file__), 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['sn_mm', 'sn_mm.*']),
    # The lowest versions the code needs, and what was checked (the tested set is the one
    # requirements/constraints.txt pins: Python 3.11, torch 2.13.0, mmengine 0.10.7,
    # mmcv 2.1.0):
    # - torch 2.6: sn_mm's checkpoint allowlist names globals with (object, 'module.name')
    #   tuples in torch.serialization.safe_globals (pytorch#142153, torch 2.6; the
    #   context manager itself and get_unsafe_globals_in_checkpoint are torch 2.5),
    #   and the forward calls torch.is_autocast_enabled(device_type) (torch 2.4);
    # - Python 3.9: torch 2.6's own floor (sn_mm's sources parse as Python 3.8);
    # - mmengine 0.10.0: every mmengine API sn_mm uses and the checkpoint schemes it
    #   re-registers (sn_mm.compat) are the same in the 0.10.0 and 0.10.7 sources;
    #   older releases were not checked;
    # - mmcv 2.0.0rc4 - 2.1.x: what mmdet 3.x accepts.
    # torch and mmcv are deliberately not pinned here: users pick their CUDA/CPU builds.
    python_requires='>=3.9',
    install_requires=['torch>=2.6', 'mmengine>=0.10.0,<1.0', 'mmcv>=2.0.0rc4,<2.2.0',
                      'numpy'],
    extras_require={
        'det': ['mmdet>=3.0,<4.0'],
        'seg': ['mmsegmentation>=1.0,<2.0', 'ftfy', 'regex'],
        'analysis': ['matplotlib', 'scikit-learn'],
        'tests': ['pytest'],
    },
    license='Apache-2.0',
    **extension_kwargs(),
)
