"""sn_mm: Switchable Normalization for MMDetection / MMSegmentation."""
import os
import os.path as osp

from setuptools import find_packages, setup


def extension_kwargs():
    """The optional CPU kernel (sn_mm._ext), built like mmcv's ops.

    Set SN_MM_WITH_OPS=0 to skip it; sn_mm then uses its pure-torch path (same math).
    """
    if os.getenv('SN_MM_WITH_OPS', '1') == '0':
        return {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension
    ext = CppExtension('sn_mm._ext', ['sn_mm/ops/csrc/sn_cpu.cpp'],
                       extra_compile_args=['-O3', '-fopenmp-simd'])
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
