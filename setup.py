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
    python_requires='>=3.9',
    # torch and mmcv are deliberately not pinned here: users pick their CUDA/CPU
    # builds (see README, "Install"); requirements/ holds the tested versions.
    install_requires=['torch>=2.0', 'mmengine>=0.10,<1.0', 'mmcv>=2.0.0rc4,<2.2.0'],
    extras_require={
        'det': ['mmdet>=3.0,<4.0'],
        'seg': ['mmsegmentation>=1.0,<2.0', 'ftfy', 'regex'],
        'tests': ['pytest'],
    },
    license='Apache-2.0',
    **extension_kwargs(),
)
