"""Compile every Triton SN kernel specialization for NVIDIA GPUs, on a machine without one.

The interpreter (``TRITON_INTERPRET=1``, tests/test_triton_kernels.py) checks the kernels'
values on CPU; it does not check that Triton's GPU compiler accepts them. This tool runs
:func:`sn_mm.ops.triton_kernels.forward`/``backward`` for a set of configurations with the
launches *recorded* instead of executed, derives each launch's signature as Triton's
launcher would (tensor dtypes, 32/64-bit integers, integers equal to 1 specialized), and
compiles it with ``triton.compile`` down to a cubin for each target (bundled ptxas; no GPU,
no CUDA driver needed), and reports the registers and spills ``ptxas -v`` finds.

    python tools/triton_compile_check.py [--arch 90 80] [--quick]

Prints one line per kernel specialization and exits non-zero if one fails to compile.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

if os.environ.get('TRITON_INTERPRET', '0') not in ('', '0'):
    sys.exit('run without TRITON_INTERPRET: this tool compiles for the GPU')

os.environ.setdefault('TRITON_DEFAULT_FP_FUSION', '1')  # Triton 3.9's default, without its warning
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from sn_mm.ops import triton_kernels as tk  # noqa: E402

_DTYPES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}


def _configs(quick: bool):
    """``(shape, dtype, channels_last, pool, bn_mode, per_sample, softmax, sync)``."""
    configs = [
        ((2, 8, 7, 7), torch.float16, True, ('IN', 'LN', 'BN', 'GN'), 'batch', True, True, False),
        ((2, 8, 5, 5), torch.bfloat16, False, ('IN', 'LN', 'BN'), 'given', False, True, True),
    ]
    if not quick:
        configs += [
            ((2, 8, 56, 56), torch.float32, False, ('IN', 'LN'), 'none', False, False, False),
            ((512, 256, 7, 7), torch.float16, False, ('IN', 'LN', 'BN'), 'batch', False, True,
             False),
            ((4, 13, 1, 1), torch.float32, True, ('IN', 'LN', 'BN'), 'batch', False, True, False),
            ((0, 6, 3, 3), torch.float32, False, ('IN', 'LN', 'BN'), 'given', False, True, False),
            ((1, 6, 3, 3), torch.bfloat16, False, ('LN', 'GN'), 'none', True, False, False),
            ((1, 2, 200, 272), torch.float16, False, ('IN', 'LN', 'BN'), 'batch', False, True,
             False),
            ((4, 64, 14, 14), torch.bfloat16, True, ('IN', 'LN', 'BN'), 'given', True, True,
             False),
        ]
    return configs


def record_launches(quick: bool):
    """The kernel launches of forward and backward for each configuration (not executed)."""
    launches = []

    def record(kernel, grid, *args, **meta):
        launches.append((kernel, args, meta))

    tk._launch, tk.INTERPRET = record, True  # CPU tensors, nothing launched
    for shape, dtype, channels_last, pool, bn_mode, per_sample, softmax, sync in _configs(quick):
        n, c = shape[:2]
        x = torch.zeros(shape, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        k = len(pool)
        w = torch.ones((n, k) if per_sample else (k,))
        ones, zeros = torch.ones(c), torch.zeros(c)
        sync_moments = (lambda m, u: (zeros, ones, torch.ones(2))) if sync else None
        sync_grad = (lambda gm, gv: (gm, gv)) if sync else None
        out = tk.forward(x, ones, zeros, w, w, zeros, ones, pool, 2, bn_mode, 1e-5, True,
                         softmax, sync_moments=sync_moments)
        tk.backward(torch.zeros_like(x), x, out[1], out[2], ones, w, w, out[3], out[4],
                    torch.ones(2), pool, 2, bn_mode, 1e-5, True, softmax, True,
                    sync_grad=sync_grad)
    return launches


def signature(kernel, args, meta):
    """``(signature, constexprs, options)`` as Triton's launcher specializes them."""
    names = kernel.arg_names
    sig, constexprs = {}, {}
    for name, value in zip(names, args):
        if isinstance(value, torch.Tensor):
            sig[name] = '*' + _DTYPES[value.dtype]
        elif isinstance(value, bool):
            sig[name] = 'i1'
        elif isinstance(value, int):
            if value == 1 and name not in kernel.do_not_specialize:  # Triton specializes 1
                sig[name], constexprs[name] = 'constexpr', 1
            else:
                sig[name] = 'i32' if -2**31 <= value < 2**31 else 'i64'
        elif isinstance(value, float):
            sig[name] = 'fp32'
        else:
            raise TypeError(f'{kernel.__name__}: argument {name} of type {type(value)}')
    options = {}
    for name, value in meta.items():
        if name in ('num_warps', 'num_stages'):
            options[name] = value
        else:
            sig[name], constexprs[name] = 'constexpr', value
    return {n: sig[n] for n in names}, constexprs, options


def registers(ptx: str, arch: int) -> str:
    """``'N regs, S B spilled'`` from the bundled ptxas's verbose output ('' if unavailable)."""
    bin_dir = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin')
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'k.ptx')
        with open(path, 'w') as f:
            f.write(ptx)
        for name in ('ptxas-blackwell', 'ptxas'):  # the one that knows this PTX version
            exe = os.path.join(bin_dir, name)
            if not os.path.exists(exe):
                continue
            target = re.search(r'^\.target\s+(sm_\w+)', ptx, re.M)  # e.g. sm_90a
            out = subprocess.run([exe, f'-arch={target.group(1) if target else f"sm_{arch}"}',
                                  '-v', path, '-o',
                                  os.path.join(tmp, 'k.cubin')], capture_output=True, text=True)
            text = out.stdout + out.stderr
            regs = re.search(r'Used (\d+) registers', text)
            spills = re.findall(r'(\d+) bytes spill (?:stores|loads)', text)
            if out.returncode == 0 and regs:
                return f'{regs.group(1)} regs, {sum(map(int, spills))} B spill stores+loads'
    return ''


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', type=int, nargs='+', default=[90, 80],
                        help='CUDA compute capabilities to compile for (90: H100/H200, 80: A100)')
    parser.add_argument('--quick', action='store_true', help='two configurations only')
    args = parser.parse_args(argv)
    seen, failures = set(), 0
    for kernel, kargs, meta in record_launches(args.quick):
        sig, constexprs, options = signature(kernel, kargs, meta)
        key = (kernel.__name__, tuple(sig.items()), tuple(sorted(constexprs.items(), key=str)))
        if key in seen:
            continue
        seen.add(key)
        for arch in args.arch:
            start = time.perf_counter()
            try:
                compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                                          target=GPUTarget('cuda', arch, 32), options=options)
                status = (f'ok   cubin {len(compiled.asm["cubin"])} B, '
                          f'{options.get("num_warps", 4)} warps, '
                          f'{registers(compiled.asm["ptx"], arch)}')
            except Exception as error:  # report every failure, then exit non-zero
                failures += 1
                status = f'FAIL {type(error).__name__}: {str(error).splitlines()[0][:200]}'
            blocks = {k: v for k, v in constexprs.items() if k.startswith('BLOCK')}
            print(f'sm_{arch} {kernel.__name__:22s} {blocks} {status} '
                  f'({time.perf_counter() - start:.1f} s)', flush=True)
    print(f'{len(seen)} specializations x {len(args.arch)} targets, {failures} failed')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
