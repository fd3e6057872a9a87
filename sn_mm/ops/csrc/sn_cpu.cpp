// sn_mm CPU kernels: the two full-size passes of Switchable Normalization that ATen
// has no fast CPU kernel for.
//
// instance_moments: for x of shape (R, L) (R = N*C rows, contiguous), the per-row mean
// and biased variance, two passes over each row while it is in cache (the second pass
// reads it from L2). Partial sums run over blocks of kBlock elements in the input's
// dtype (vectorized), blocks are added in double, and both moments carry the exact
// two-pass correction for the rounding of the first-pass mean m:
//
//     m = sum_l x / L,  d = x - m,  mean = m + sum_l d / L,  var = (sum_l d^2 - (sum_l d)^2 / L) / L.
//
// ATen's batch_norm_update_stats on the (1, R, L) view computes the same (the
// fallback in sn_mm/ops/functional.py) but is several times slower on CPU (bench/bench_sn.py).
//
// fused_input_grad: for x, g of shape (R, L) (R = N*C rows, contiguous) and per-row coefficients
// a, k, c of shape (R,):
//
//     grad_x[r, l] = a[r] * g[r, l] + k[r] * x[r, l] + c[r]
//
// one read of g and x and one write of grad_x — the same memory traffic as the
// elementwise pass of BatchNorm's backward. The pure-torch fallback
// (sn_mm/ops/functional.py) computes the same expression with two addcmul passes.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

// One clone per ISA, picked at load time (GCC function multi-versioning), so a wheel
// built on one x86-64 machine is both portable and vectorized with AVX2/AVX-512.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SN_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SN_MULTIVERSION
#endif

namespace {

constexpr int64_t kBlock = 2048;

int64_t row_grain(int64_t length) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(length, 1));
}

template <typename scalar_t>
inline __attribute__((always_inline)) void row_moments(
    const scalar_t* __restrict__ x, int64_t length, double* mean_out, double* var_out) {
  double sum = 0;
  for (int64_t s = 0; s < length; s += kBlock) {
    const int64_t e = std::min(s + kBlock, length);
    scalar_t part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t l = s; l < e; ++l) part += x[l];
    sum += part;
  }
  const double mean = sum / length;
  const scalar_t m = static_cast<scalar_t>(mean);
  double squares = 0, deviation = 0;
  for (int64_t s = 0; s < length; s += kBlock) {
    const int64_t e = std::min(s + kBlock, length);
    scalar_t sq = 0, dv = 0;
#pragma omp simd reduction(+ : sq, dv)
    for (int64_t l = s; l < e; ++l) {
      const scalar_t d = x[l] - m;
      sq += d * d;
      dv += d;
    }
    squares += sq;
    deviation += dv;
  }
  *mean_out = mean + deviation / length;
  *var_out = std::max(0.0, (squares - deviation * deviation / length) / length);
}

// The row loop lives inside the multi-versioned function, so short rows (RoI-sized
// 7x7 maps: 49 values) pay one ISA dispatch per chunk of rows, not one per row.
template <typename scalar_t>
SN_MULTIVERSION void rows_moments(const scalar_t* __restrict__ x, int64_t begin, int64_t end,
                                  int64_t length, scalar_t* mean, scalar_t* var) {
  for (int64_t r = begin; r < end; ++r) {
    double m, v;
    row_moments<scalar_t>(x + r * length, length, &m, &v);
    mean[r] = static_cast<scalar_t>(m);
    var[r] = static_cast<scalar_t>(v);
  }
}

std::vector<torch::Tensor> instance_moments(const torch::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "instance_moments: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && x.size(1) > 0,
              "instance_moments: x must be (R, L) with L > 0, got ", x.sizes());
  auto xc = x.contiguous();
  const int64_t rows = xc.size(0), length = xc.size(1);
  auto mean = torch::empty({rows}, xc.options());
  auto var = torch::empty({rows}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "instance_moments", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* vp = var.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(length), [&](int64_t begin, int64_t end) {
      rows_moments<scalar_t>(xp, begin, end, length, mp, vp);
    });
  });
  return {mean, var};
}

template <typename scalar_t>
void fused_input_grad_kernel(const scalar_t* g, const scalar_t* x, const scalar_t* a,
                             const scalar_t* k, const scalar_t* c, scalar_t* out,
                             int64_t rows, int64_t length) {
  at::parallel_for(0, rows, row_grain(length), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t ar = a[r], kr = k[r], cr = c[r];
      const scalar_t* gr = g + r * length;
      const scalar_t* xr = x + r * length;
      scalar_t* outr = out + r * length;
#pragma omp simd
      for (int64_t l = 0; l < length; ++l) {
        outr[l] = ar * gr[l] + kr * xr[l] + cr;
      }
    }
  });
}

torch::Tensor fused_input_grad(const torch::Tensor& g, const torch::Tensor& x,
                               const torch::Tensor& a, const torch::Tensor& k,
                               const torch::Tensor& c) {
  TORCH_CHECK(g.device().is_cpu() && x.device().is_cpu(), "fused_input_grad: CPU tensors only");
  TORCH_CHECK(g.dim() == 2 && x.sizes() == g.sizes(),
              "fused_input_grad: g and x must be (R, L) of equal shape, got ", g.sizes(),
              " and ", x.sizes());
  TORCH_CHECK(a.numel() == g.size(0) && k.numel() == g.size(0) && c.numel() == g.size(0),
              "fused_input_grad: a, k, c must have R = ", g.size(0), " elements");
  TORCH_CHECK(g.scalar_type() == x.scalar_type() && a.scalar_type() == x.scalar_type() &&
                  k.scalar_type() == x.scalar_type() && c.scalar_type() == x.scalar_type(),
              "fused_input_grad: all tensors must share one dtype");
  auto gc = g.contiguous(), xc = x.contiguous();
  auto ac = a.contiguous(), kc = k.contiguous(), cc = c.contiguous();
  auto out = torch::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_input_grad", [&] {
    fused_input_grad_kernel<scalar_t>(gc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                                      ac.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(),
                                      cc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                      g.size(0), g.size(1));
  });
  return out;
}

// Threads at::parallel_for can use here: 1 if this library was built without OpenMP.
int64_t parallel_threads() {
#ifdef _OPENMP
  return at::get_num_threads();
#else
  return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("parallel_threads", &parallel_threads,
        "threads the kernels' parallel loops use (1 when built without OpenMP)");
  m.def("instance_moments", &instance_moments,
        "per-row (mean, biased variance) of an (R, L) tensor (CPU)");
  m.def("fused_input_grad", &fused_input_grad,
        "grad_x = a*g + k*x + c per row of (R, L) tensors (CPU)");
}
