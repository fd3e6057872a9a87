// sn_mm CPU kernel: the fused input-gradient pass of Switchable Normalization.
//
// For x, g of shape (R, L) (R = N*C rows, contiguous) and per-row coefficients
// a, k, c of shape (R,):
//
//     grad_x[r, l] = a[r] * g[r, l] + k[r] * x[r, l] + c[r]
//
// one read of g and x and one write of grad_x — the same memory traffic as the
// elementwise pass of BatchNorm's backward. The pure-torch fallback
// (sn_mm/ops/functional.py) computes the same expression with two addcmul passes.
#include <torch/extension.h>
#include <ATen/Parallel.h>

namespace {

template <typename scalar_t>
void fused_input_grad_kernel(const scalar_t* g, const scalar_t* x, const scalar_t* a,
                             const scalar_t* k, const scalar_t* c, scalar_t* out,
                             int64_t rows, int64_t length) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(length, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_input_grad", &fused_input_grad,
        "grad_x = a*g + k*x + c per row of (R, L) tensors (CPU)");
}
