"""Count the Triton IR operations of sn_mm's Triton kernels in two versions of the module.

    python bench/triton_ttir_ops.py OLD.py NEW.py     # e.g. OLD.py from `git show REV:...`

Both files are versions of ``sn_mm/ops/triton_kernels.py``. Every kernel is lowered to TTIR
(after Triton's inliner, canonicalizer, combine and CSE passes, the ``make_ttir`` stage of
the CUDA backend for sm_90) with fixed compile-time constants, for a full pool
(IN, LN, BN, GN) and for IN + BN; the counts of each operation kind are compared. No GPU
is needed. Equal counts say that a refactoring into ``@triton.jit`` helpers (which Triton
inlines) left the kernels' arithmetic and memory operations as they were. Uses Triton's
compiler internals (``ASTSource.make_ir``), tested with Triton 3.9.
"""
import argparse
import collections
import importlib.util
import os.path as osp
import re
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
POOLS = {'IN+LN+BN+GN': dict(I_IN=0, I_LN=1, I_BN=2, I_GN=3),
         'IN+BN': dict(I_IN=0, I_LN=-1, I_BN=1, I_GN=-1)}


def load(path: str, name: str):
    """Import a version of the module; its relative imports resolve to sn_mm.ops."""
    source = open(path).read()
    source = re.sub(r'^from \.(\w*) import', r'from sn_mm.ops.\1 import', source, flags=re.M)
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    exec(compile(source, path, 'exec'), module.__dict__)
    return module


def ttir_ops(kernel, consts: dict) -> collections.Counter:
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource
    signature, constexprs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            signature[name] = 'constexpr'
            constexprs[(i,)] = consts[name]
        elif name.endswith('_ptr'):
            signature[name] = '*fp32'
        elif name in ('factor', 'eps'):
            signature[name] = 'fp32'
        else:
            signature[name] = 'i32'
    target = GPUTarget('cuda', 90, 32)
    backend = CUDABackend(target)
    options = backend.parse_options({'num_warps': 4})
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = ASTSource(kernel, signature, constexprs).make_ir(
        target, options, backend.get_codegen_implementation(options), backend.get_module_map(),
        context)
    text = str(CUDABackend.make_ttir(module, {}, options, 90))
    return collections.Counter(re.findall(r'= ([a-z_]+\.[a-z_.]+)', text)
                               + re.findall(r'^\s+([a-z_]+\.[a-z_.]+) ', text, re.M))


def cases():
    for pool, idx in POOLS.items():
        common = dict(idx, K=4, SOFTMAX=True, BLOCK_N=8, BLOCK_C=16, BLOCK_K=4)
        yield f'_mix_forward_kernel {pool}', '_mix_forward_kernel', dict(common, BN_MODE=2,
                                                                          MERGE=True)
        yield f'_mix_backward_kernel {pool}', '_mix_backward_kernel', dict(
            common, SHARED_A=True, SHARED_B=False)
    yield '_affine_kernel', '_affine_kernel', dict(BLOCK_C=8, BLOCK_L=64)
    yield '_input_grad_kernel', '_input_grad_kernel', dict(ADD_BN=True, BLOCK_C=8, BLOCK_L=64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('old')
    p.add_argument('new')
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    old, new = load(args.old, '_tk_old'), load(args.new, '_tk_new')
    same = True
    for label, name, consts in cases():
        a, b = ttir_ops(getattr(old, name), consts), ttir_ops(getattr(new, name), consts)
        diff = {op: (a[op], b[op]) for op in sorted(set(a) | set(b)) if a[op] != b[op]}
        same = same and not diff
        print(f'{label}: {sum(a.values())} -> {sum(b.values())} ops; '
              f'differing kinds (old, new): {diff or "none"}')
    return 0 if same else 1


if __name__ == '__main__':
    sys.exit(main())
