// sn_mm CPU kernels for Switchable Normalization (sn_mm/ops/kernels.py calls them; the
// pure-torch functions beside each call compute the same math).
//
// Full-size passes over x viewed as (R, L) rows (R = N*C, contiguous). Inputs may be
// float64, float32, bfloat16 or float16; statistics and coefficients are float64 for
// float64 inputs and float32 otherwise (the "accumulation dtype"), so a reduced-
// precision input is read as it is and never copied to float32 in full:
//
//   instance_moments:  per-row mean and biased variance, two passes while the row is in
//                      cache, partial sums in blocks, blocks added in double, with the
//                      exact correction for the rounding of the first-pass mean m:
//                      mean = m + sum(x - m)/L, var = (sum (x-m)^2 - (sum(x-m))^2/L)/L.
//   affine:            y = scale[r] * x + shift[r], written in x's dtype.
//   grad_sums:         (sum_l g (x - mean[r]), sum_l g) per row in one pass.
//   input_grad:        grad_x = a[r] g + k[r] x + c[r], written in x's dtype.
//
// The (N, C) mixing step, forward and backward, each in one call (mix_forward,
// mix_backward); the equations are in sn_mm/ops/mixing.py, whose pure-torch functions
// are the reference for these loops.
#include <torch/extension.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
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
using acc_t = at::opmath_type<scalar_t>;  // double for double, float otherwise

// Element loads and stores in the accumulation type. bfloat16 is converted with plain
// integer shifts (round-to-nearest-even on store, NaN kept NaN), which the compiler
// vectorizes; c10::BFloat16's own conversions do not, and would make a bf16 pass slower
// than a float32 one.
template <typename scalar_t>
struct Elem {
  static inline acc_t<scalar_t> load(const scalar_t* p, int64_t i) {
    return static_cast<acc_t<scalar_t>>(p[i]);
  }
  static inline void store(scalar_t* p, int64_t i, acc_t<scalar_t> v) {
    p[i] = static_cast<scalar_t>(v);
  }
};

template <>
struct Elem<c10::BFloat16> {
  static inline float load(const c10::BFloat16* p, int64_t i) {
    const uint32_t bits = uint32_t(reinterpret_cast<const uint16_t*>(p)[i]) << 16;
    return __builtin_bit_cast(float, bits);
  }
  static inline void store(c10::BFloat16* p, int64_t i, float v) {
    const uint32_t u = __builtin_bit_cast(uint32_t, v);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    reinterpret_cast<uint16_t*>(p)[i] = v != v ? uint16_t(0x7FC0) : uint16_t(rounded);
  }
};

#define SN_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

torch::ScalarType acc_type(torch::ScalarType t) {
  return t == torch::kDouble ? torch::kDouble : torch::kFloat;
}

void check_rows(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, ": CPU tensors only");
  TORCH_CHECK(x.dim() == 2, name, ": expected an (R, L) tensor, got ", x.sizes());
}

// Values per row of a contiguous tensor split into `rows` rows (an (N, C, *spatial) tensor
// with rows = N*C).
int64_t row_length(const torch::Tensor& xc, int64_t rows, const char* name) {
  TORCH_CHECK(rows > 0 && xc.numel() % rows == 0, name, ": ", xc.numel(),
              " values do not split into ", rows, " rows");
  return xc.numel() / rows;
}

void check_coeff(const torch::Tensor& t, int64_t rows, torch::ScalarType acc, const char* what) {
  TORCH_CHECK(t.numel() == rows && t.scalar_type() == acc && t.is_contiguous(), what,
              " must be a contiguous tensor of ", rows, " elements of dtype ", acc, ", got ",
              t.sizes(), " ", t.scalar_type());
}

// ------------------------------------------------------------------ moments
template <typename scalar_t>
inline __attribute__((always_inline)) void row_moments(
    const scalar_t* __restrict__ x, int64_t length, double* mean_out, double* var_out) {
  using opmath = acc_t<scalar_t>;
  double sum = 0;
  for (int64_t s = 0; s < length; s += kBlock) {
    const int64_t e = std::min(s + kBlock, length);
    opmath part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t l = s; l < e; ++l) part += Elem<scalar_t>::load(x, l);
    sum += part;
  }
  const double mean = sum / length;
  const opmath m = static_cast<opmath>(mean);
  double squares = 0, deviation = 0;
  for (int64_t s = 0; s < length; s += kBlock) {
    const int64_t e = std::min(s + kBlock, length);
    opmath sq = 0, dv = 0;
#pragma omp simd reduction(+ : sq, dv)
    for (int64_t l = s; l < e; ++l) {
      const opmath d = Elem<scalar_t>::load(x, l) - m;
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
                                  int64_t length, acc_t<scalar_t>* mean, acc_t<scalar_t>* var) {
  for (int64_t r = begin; r < end; ++r) {
    double m, v;
    row_moments<scalar_t>(x + r * length, length, &m, &v);
    mean[r] = static_cast<acc_t<scalar_t>>(m);
    var[r] = static_cast<acc_t<scalar_t>>(v);
  }
}

std::vector<torch::Tensor> instance_moments(const torch::Tensor& x) {
  check_rows(x, "instance_moments");
  TORCH_CHECK(x.size(1) > 0, "instance_moments: rows must not be empty, got ", x.sizes());
  auto xc = x.contiguous();
  const int64_t rows = xc.size(0), length = xc.size(1);
  auto opts = xc.options().dtype(acc_type(xc.scalar_type()));
  auto mean = torch::empty({rows}, opts);
  auto var = torch::empty({rows}, opts);
  SN_DISPATCH(xc.scalar_type(), "instance_moments", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    auto* mp = mean.data_ptr<acc_t<scalar_t>>();
    auto* vp = var.data_ptr<acc_t<scalar_t>>();
    at::parallel_for(0, rows, row_grain(length), [&](int64_t begin, int64_t end) {
      rows_moments<scalar_t>(xp, begin, end, length, mp, vp);
    });
  });
  return {mean, var};
}

// ------------------------------------------------------------------ affine
template <typename scalar_t>
SN_MULTIVERSION void rows_affine(const scalar_t* __restrict__ x, const acc_t<scalar_t>* scale,
                                 const acc_t<scalar_t>* shift, scalar_t* __restrict__ out,
                                 int64_t begin, int64_t end, int64_t length) {
  using opmath = acc_t<scalar_t>;
  for (int64_t r = begin; r < end; ++r) {
    const opmath a = scale[r], b = shift[r];
    const scalar_t* xr = x + r * length;
    scalar_t* outr = out + r * length;
#pragma omp simd
    for (int64_t l = 0; l < length; ++l) {
      Elem<scalar_t>::store(outr, l, a * Elem<scalar_t>::load(xr, l) + b);
    }
  }
}

// x of any shape whose contiguous layout is R = scale.numel() rows of L values (an
// (N, C, *spatial) tensor with R = N*C); the result has x's shape, so it is never a view.
torch::Tensor affine(const torch::Tensor& x, const torch::Tensor& scale,
                     const torch::Tensor& shift) {
  TORCH_CHECK(x.device().is_cpu(), "affine: CPU tensors only");
  auto xc = x.contiguous();
  const int64_t rows = scale.numel();
  const int64_t length = row_length(xc, rows, "affine");
  const auto acc = acc_type(xc.scalar_type());
  check_coeff(scale, rows, acc, "affine: scale");
  check_coeff(shift, rows, acc, "affine: shift");
  auto out = torch::empty_like(xc);
  SN_DISPATCH(xc.scalar_type(), "affine", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const auto* sp = scale.data_ptr<acc_t<scalar_t>>();
    const auto* bp = shift.data_ptr<acc_t<scalar_t>>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(length), [&](int64_t begin, int64_t end) {
      rows_affine<scalar_t>(xp, sp, bp, op, begin, end, length);
    });
  });
  return out;
}

// ------------------------------------------------------------------ backward passes
template <typename scalar_t>
SN_MULTIVERSION void rows_grad_sums(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                    const acc_t<scalar_t>* mean, acc_t<scalar_t>* dot,
                                    acc_t<scalar_t>* total, int64_t begin, int64_t end,
                                    int64_t length) {
  using opmath = acc_t<scalar_t>;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* gr = g + r * length;
    const scalar_t* xr = x + r * length;
    const opmath m = mean[r];
    double d_sum = 0, g_sum = 0;
    for (int64_t s = 0; s < length; s += kBlock) {
      const int64_t e = std::min(s + kBlock, length);
      opmath dp = 0, gp = 0;
#pragma omp simd reduction(+ : dp, gp)
      for (int64_t l = s; l < e; ++l) {
        const opmath gv = Elem<scalar_t>::load(gr, l);
        dp += gv * (Elem<scalar_t>::load(xr, l) - m);
        gp += gv;
      }
      d_sum += dp;
      g_sum += gp;
    }
    dot[r] = static_cast<opmath>(d_sum);
    total[r] = static_cast<opmath>(g_sum);
  }
}

std::vector<torch::Tensor> grad_sums(const torch::Tensor& g, const torch::Tensor& x,
                                     const torch::Tensor& mean) {
  check_rows(x, "grad_sums");
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type(),
              "grad_sums: g and x must have one shape and dtype, got ", g.sizes(), " ",
              g.scalar_type(), " and ", x.sizes(), " ", x.scalar_type());
  auto gc = g.contiguous(), xc = x.contiguous();
  const int64_t rows = xc.size(0), length = xc.size(1);
  const auto acc = acc_type(xc.scalar_type());
  check_coeff(mean, rows, acc, "grad_sums: mean");
  auto dot = torch::empty({rows}, mean.options());
  auto total = torch::empty({rows}, mean.options());
  SN_DISPATCH(xc.scalar_type(), "grad_sums", [&] {
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const auto* mp = mean.data_ptr<acc_t<scalar_t>>();
    auto* dp = dot.data_ptr<acc_t<scalar_t>>();
    auto* tp = total.data_ptr<acc_t<scalar_t>>();
    at::parallel_for(0, rows, row_grain(length), [&](int64_t begin, int64_t end) {
      rows_grad_sums<scalar_t>(gp, xp, mp, dp, tp, begin, end, length);
    });
  });
  return {dot, total};
}

template <typename scalar_t>
SN_MULTIVERSION void rows_input_grad(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                     const acc_t<scalar_t>* a, const acc_t<scalar_t>* k,
                                     const acc_t<scalar_t>* c, scalar_t* __restrict__ out,
                                     int64_t begin, int64_t end, int64_t length) {
  using opmath = acc_t<scalar_t>;
  for (int64_t r = begin; r < end; ++r) {
    const opmath ar = a[r], kr = k[r], cr = c[r];
    const scalar_t* gr = g + r * length;
    const scalar_t* xr = x + r * length;
    scalar_t* outr = out + r * length;
#pragma omp simd
    for (int64_t l = 0; l < length; ++l) {
      Elem<scalar_t>::store(outr, l, ar * Elem<scalar_t>::load(gr, l) +
                                         kr * Elem<scalar_t>::load(xr, l) + cr);
    }
  }
}

// g, x of one shape whose contiguous layout is R = a.numel() rows; the result has x's shape.
torch::Tensor input_grad(const torch::Tensor& g, const torch::Tensor& x, const torch::Tensor& a,
                         const torch::Tensor& k, const torch::Tensor& c) {
  TORCH_CHECK(x.device().is_cpu() && g.device().is_cpu(), "input_grad: CPU tensors only");
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type(),
              "input_grad: g and x must have one shape and dtype, got ", g.sizes(), " ",
              g.scalar_type(), " and ", x.sizes(), " ", x.scalar_type());
  auto gc = g.contiguous(), xc = x.contiguous();
  const int64_t rows = a.numel();
  const int64_t length = row_length(xc, rows, "input_grad");
  const auto acc = acc_type(xc.scalar_type());
  check_coeff(a, rows, acc, "input_grad: a");
  check_coeff(k, rows, acc, "input_grad: k");
  check_coeff(c, rows, acc, "input_grad: c");
  auto out = torch::empty_like(xc);
  SN_DISPATCH(xc.scalar_type(), "input_grad", [&] {
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const auto* ap = a.data_ptr<acc_t<scalar_t>>();
    const auto* kp = k.data_ptr<acc_t<scalar_t>>();
    const auto* cp = c.data_ptr<acc_t<scalar_t>>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(length), [&](int64_t begin, int64_t end) {
      rows_input_grad<scalar_t>(gp, xp, ap, kp, cp, op, begin, end, length);
    });
  });
  return out;
}

// ------------------------------------------------------------------ (N, C) mixing step
// Modes of the BN branch (sn_mm/ops/mixing.py, BN_*): 0 none, 1 constant moments given
// (running statistics, or SyncSN's synchronized batch moments), 2 batch moments of this
// input, computed here.
constexpr int64_t kNoBN = 0, kGivenBN = 1, kBatchBN = 2;

template <typename T>
std::vector<torch::Tensor> mix_forward_impl(const torch::Tensor& mean_in, const torch::Tensor& u,
                                            const torch::Tensor& weight, const torch::Tensor& bias,
                                            const torch::Tensor& a, const torch::Tensor& b,
                                            const torch::Tensor& bn_mean_in,
                                            const torch::Tensor& bn_var_in, int64_t mode,
                                            double eps) {
  const int64_t n = mean_in.size(0), c = mean_in.size(1);
  const T* mi = mean_in.data_ptr<T>();
  const T* ui = u.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  const T* bi = bias.data_ptr<T>();
  const T* ap = a.data_ptr<T>();
  const T* bp = b.data_ptr<T>();
  auto opts = mean_in.options();
  auto scale = torch::empty({n, c}, opts), shift = torch::empty({n, c}, opts);
  torch::Tensor bn_mean, bn_var;
  if (mode == kBatchBN) {
    bn_mean = torch::empty({c}, opts);
    bn_var = torch::empty({c}, opts);
    T* bm = bn_mean.data_ptr<T>();
    T* bv = bn_var.data_ptr<T>();
    std::vector<double> sm(c, 0.0), sv(c, 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) sm[j] += mi[i * c + j];
    for (int64_t j = 0; j < c; ++j) bm[j] = static_cast<T>(sm[j] / n);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) {
        const double d = double(mi[i * c + j]) - double(bm[j]);
        sv[j] += double(ui[i * c + j]) + d * d;
      }
    for (int64_t j = 0; j < c; ++j) bv[j] = static_cast<T>(sv[j] / n);
  } else if (mode == kGivenBN) {
    bn_mean = bn_mean_in.contiguous();
    bn_var = bn_var_in.contiguous();
  } else {
    bn_mean = torch::empty({0}, opts);
    bn_var = torch::empty({0}, opts);
  }
  const T* bm = mode != kNoBN ? bn_mean.data_ptr<T>() : nullptr;
  const T* bv = mode != kNoBN ? bn_var.data_ptr<T>() : nullptr;
  const T a0 = ap[0], a1 = ap[1], b0 = bp[0], b1 = bp[1];
  const T a2 = mode != kNoBN ? ap[2] : T(0), b2 = mode != kNoBN ? bp[2] : T(0);
  T* sc = scale.data_ptr<T>();
  T* sh = shift.data_ptr<T>();
  at::parallel_for(0, n, std::max<int64_t>(1, 32768 / std::max<int64_t>(c, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* mrow = mi + i * c;
      const T* urow = ui + i * c;
      double s_mean = 0;
      for (int64_t j = 0; j < c; ++j) s_mean += mrow[j];
      const double mean_ln = s_mean / c;
      double s_var = 0;
      for (int64_t j = 0; j < c; ++j) {
        const double d = double(mrow[j]) - mean_ln;
        s_var += double(urow[j]) + d * d;
      }
      const T m_ln = static_cast<T>(mean_ln), v_ln = static_cast<T>(s_var / c);
      T* srow = sc + i * c;
      T* hrow = sh + i * c;
      for (int64_t j = 0; j < c; ++j) {
        T mean = a0 * mrow[j] + a1 * m_ln;
        T var = b0 * urow[j] + b1 * v_ln;
        if (bm != nullptr) {
          mean += a2 * bm[j];
          var += b2 * bv[j];
        }
        const T r = T(1) / std::sqrt(var + static_cast<T>(eps));
        const T s = w[j] * r;
        srow[j] = s;
        hrow[j] = bi[j] - mean * s;
      }
    }
  });
  return {scale, shift, bn_mean, bn_var};
}

void check_mix(const torch::Tensor& mean_in, const torch::Tensor& u, const torch::Tensor& weight,
               const torch::Tensor& bias, const torch::Tensor& a, const torch::Tensor& b,
               int64_t mode) {
  TORCH_CHECK(mode == kNoBN || mode == kGivenBN || mode == kBatchBN,
              "mix: mode must be 0, 1 or 2, got ", mode);
  TORCH_CHECK(mean_in.dim() == 2 && u.sizes() == mean_in.sizes(),
              "mix: mean_in and u must be (N, C), got ", mean_in.sizes(), " and ", u.sizes());
  const auto t = mean_in.scalar_type();
  const int64_t c = mean_in.size(1), k = mode == kNoBN ? 2 : 3;
  for (const auto* p : {&mean_in, &u, &weight, &bias, &a, &b}) {
    TORCH_CHECK(p->device().is_cpu() && p->scalar_type() == t && p->is_contiguous(),
                "mix: every tensor must be a contiguous CPU tensor of dtype ", t);
  }
  TORCH_CHECK(weight.numel() == c && bias.numel() == c, "mix: weight and bias need ", c,
              " elements");
  TORCH_CHECK(a.numel() == k && b.numel() == k, "mix: mode ", mode, " needs ", k,
              " importance weights, got ", a.numel(), " and ", b.numel());
}

std::vector<torch::Tensor> mix_forward(const torch::Tensor& mean_in, const torch::Tensor& u,
                                       const torch::Tensor& weight, const torch::Tensor& bias,
                                       const torch::Tensor& a, const torch::Tensor& b,
                                       const torch::Tensor& bn_mean, const torch::Tensor& bn_var,
                                       int64_t mode, double eps) {
  check_mix(mean_in, u, weight, bias, a, b, mode);
  TORCH_CHECK(mode != kBatchBN || mean_in.size(0) > 0, "mix_forward: batch moments of an empty batch");
  std::vector<torch::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(mean_in.scalar_type(), "mix_forward", [&] {
    out = mix_forward_impl<scalar_t>(mean_in, u, weight, bias, a, b, bn_mean, bn_var, mode, eps);
  });
  return out;
}

// Backward of mix_forward given S = dL/dscale, T = dL/dshift. Returns
// (scale, grad_mean_in, grad_u, grad_weight, grad_bias, grad_a, grad_b, g_mean_bn, g_var_bn)
// where g_*_bn = (a_BN sum_n dmu, b_BN sum_n dsigma2) are the (C,) gradients w.r.t. the
// BN moments. In mode 2 their contribution to grad_mean_in / grad_u (over count = N
// samples) is already added; in mode 1 with `count > 0` (SyncSN: the caller has summed
// g_*_bn over every rank and calls add_bn_terms) nothing is added here.
template <typename T>
std::vector<torch::Tensor> mix_backward_impl(const torch::Tensor& grad_scale,
                                             const torch::Tensor& grad_shift,
                                             const torch::Tensor& mean_in, const torch::Tensor& u,
                                             const torch::Tensor& weight, const torch::Tensor& a,
                                             const torch::Tensor& b, const torch::Tensor& bn_mean,
                                             const torch::Tensor& bn_var, int64_t mode,
                                             double eps) {
  const int64_t n = mean_in.size(0), c = mean_in.size(1);
  const bool has_bn = mode != kNoBN;
  const int64_t k = has_bn ? 3 : 2;
  const T* S = grad_scale.data_ptr<T>();
  const T* Tg = grad_shift.data_ptr<T>();
  const T* mi = mean_in.data_ptr<T>();
  const T* ui = u.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  const T* ap = a.data_ptr<T>();
  const T* bp = b.data_ptr<T>();
  const T* bm = has_bn ? bn_mean.data_ptr<T>() : nullptr;
  const T* bv = has_bn ? bn_var.data_ptr<T>() : nullptr;
  auto opts = mean_in.options();
  auto scale = torch::empty({n, c}, opts), g_mean_in = torch::empty({n, c}, opts),
       g_u = torch::empty({n, c}, opts);
  auto g_weight = torch::zeros({c}, opts), g_bias = torch::zeros({c}, opts);
  auto g_a = torch::zeros({k}, opts), g_b = torch::zeros({k}, opts);
  auto g_mbn = torch::zeros({has_bn ? c : 0}, opts), g_vbn = torch::zeros({has_bn ? c : 0}, opts);
  T* sc = scale.data_ptr<T>();
  T* gm_out = g_mean_in.data_ptr<T>();
  T* gu_out = g_u.data_ptr<T>();
  const T a0 = ap[0], a1 = ap[1], b0 = bp[0], b1 = bp[1];
  const T a2 = has_bn ? ap[2] : T(0), b2 = has_bn ? bp[2] : T(0);
  const T inv_c = T(1) / T(c);
  std::vector<double> gw(c, 0.0), gb(c, 0.0), smu(c, 0.0), svar(c, 0.0);
  double ga0 = 0, ga1 = 0, gb0 = 0, gb1 = 0;
  std::vector<T> mean_row(c), gm(c), gv(c);
  for (int64_t i = 0; i < n; ++i) {
    const T* mrow = mi + i * c;
    const T* urow = ui + i * c;
    const T* Srow = S + i * c;
    const T* Trow = Tg + i * c;
    double s_mean = 0;
    for (int64_t j = 0; j < c; ++j) s_mean += mrow[j];
    const T m_ln = static_cast<T>(s_mean / c);
    double s_var = 0;
    for (int64_t j = 0; j < c; ++j) {
      const double d = double(mrow[j]) - double(m_ln);
      s_var += double(urow[j]) + d * d;
    }
    const T v_ln = static_cast<T>(s_var / c);
    double gm_ln = 0, gv_ln = 0, ga0_row = 0, gb0_row = 0;
    T* srow = sc + i * c;
    for (int64_t j = 0; j < c; ++j) {
      T mean = a0 * mrow[j] + a1 * m_ln;
      T var = b0 * urow[j] + b1 * v_ln;
      if (has_bn) {
        mean += a2 * bm[j];
        var += b2 * bv[j];
      }
      const T r = T(1) / std::sqrt(var + static_cast<T>(eps));
      const T s = w[j] * r;
      srow[j] = s;
      const T D = Srow[j] - mean * Trow[j];
      gb[j] += Trow[j];
      gw[j] += D * r;
      const T dmu = -s * Trow[j];
      const T dvar = T(-0.5) * D * s * r * r;
      gm[j] = dmu;
      gv[j] = dvar;
      gm_ln += dmu;
      gv_ln += dvar;
      ga0_row += dmu * mrow[j];
      gb0_row += dvar * urow[j];
      if (has_bn) {
        smu[j] += dmu;
        svar[j] += dvar;
      }
    }
    ga0 += ga0_row;
    gb0 += gb0_row;
    ga1 += gm_ln * m_ln;
    gb1 += gv_ln * v_ln;
    const T gml = static_cast<T>(gm_ln), gvl = static_cast<T>(gv_ln);
    T* gmo = gm_out + i * c;
    T* guo = gu_out + i * c;
    for (int64_t j = 0; j < c; ++j) {
      gmo[j] = a0 * gm[j] + a1 * inv_c * gml + T(2) * b1 * inv_c * gvl * (mrow[j] - m_ln);
      guo[j] = b0 * gv[j] + b1 * inv_c * gvl;
    }
  }
  T* gwp = g_weight.data_ptr<T>();
  T* gbp = g_bias.data_ptr<T>();
  for (int64_t j = 0; j < c; ++j) {
    gwp[j] = static_cast<T>(gw[j]);
    gbp[j] = static_cast<T>(gb[j]);
  }
  T* gap = g_a.data_ptr<T>();
  T* gbb = g_b.data_ptr<T>();
  gap[0] = static_cast<T>(ga0);
  gap[1] = static_cast<T>(ga1);
  gbb[0] = static_cast<T>(gb0);
  gbb[1] = static_cast<T>(gb1);
  if (has_bn) {
    double ga2 = 0, gb2 = 0;
    T* gmb = g_mbn.data_ptr<T>();
    T* gvb = g_vbn.data_ptr<T>();
    for (int64_t j = 0; j < c; ++j) {
      ga2 += smu[j] * double(bm[j]);
      gb2 += svar[j] * double(bv[j]);
      gmb[j] = static_cast<T>(smu[j]) * a2;
      gvb[j] = static_cast<T>(svar[j]) * b2;
    }
    gap[2] = static_cast<T>(ga2);
    gbb[2] = static_cast<T>(gb2);
    if (mode == kBatchBN) {  // batch moments of these n samples: flow back into them
      const T inv_n = T(1) / T(n);
      for (int64_t i = 0; i < n; ++i) {
        T* gmo = gm_out + i * c;
        T* guo = gu_out + i * c;
        const T* mrow = mi + i * c;
        for (int64_t j = 0; j < c; ++j) {
          const T tv = gvb[j] * T(2) * inv_n;
          gmo[j] += gmb[j] * inv_n + (mrow[j] - bm[j]) * tv;
          guo[j] += tv * T(0.5);
        }
      }
    }
  }
  return {scale, g_mean_in, g_u, g_weight, g_bias, g_a, g_b, g_mbn, g_vbn};
}

std::vector<torch::Tensor> mix_backward(const torch::Tensor& grad_scale,
                                        const torch::Tensor& grad_shift,
                                        const torch::Tensor& mean_in, const torch::Tensor& u,
                                        const torch::Tensor& weight, const torch::Tensor& a,
                                        const torch::Tensor& b, const torch::Tensor& bn_mean,
                                        const torch::Tensor& bn_var, int64_t mode, double eps) {
  check_mix(mean_in, u, weight, weight, a, b, mode);
  TORCH_CHECK(grad_scale.sizes() == mean_in.sizes() && grad_shift.sizes() == mean_in.sizes() &&
                  grad_scale.scalar_type() == mean_in.scalar_type() &&
                  grad_shift.scalar_type() == mean_in.scalar_type() &&
                  grad_scale.is_contiguous() && grad_shift.is_contiguous(),
              "mix_backward: grad_scale and grad_shift must be contiguous (N, C) tensors like mean_in");
  if (mode != kNoBN) {
    TORCH_CHECK(bn_mean.numel() == mean_in.size(1) && bn_var.numel() == mean_in.size(1) &&
                    bn_mean.scalar_type() == mean_in.scalar_type() &&
                    bn_var.scalar_type() == mean_in.scalar_type() && bn_mean.is_contiguous() &&
                    bn_var.is_contiguous(),
                "mix_backward: bn_mean and bn_var must be contiguous (C,) tensors like mean_in");
  }
  std::vector<torch::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(mean_in.scalar_type(), "mix_backward", [&] {
    out = mix_backward_impl<scalar_t>(grad_scale, grad_shift, mean_in, u, weight, a, b, bn_mean,
                                      bn_var, mode, eps);
  });
  return out;
}

// ------------------------------------------------------------------ the ops
// sn_mm::switchable_norm and sn_mm::switchable_norm_backward: schemas, CPU kernels and
// the autograd kernel (the Python side registers their fake kernels, and the device-
// generic twins sn_mm::switchable_norm_generic[_backward] that run on any device and
// for SyncSN; sn_mm/ops/functional.py documents the math). bn_mode: 0 none, 1 running
// statistics, 2 batch statistics (3, SyncSN, exists only in the generic op).
using torch::Tensor;

// Softmax of a (K,) logit vector (K = 2 or 3) and its backward, p * (g - <p, g>).
Tensor small_softmax(const Tensor& logits) {
  auto l = logits.contiguous();
  auto p = torch::empty_like(l);
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "small_softmax", [&] {
    const scalar_t* z = l.data_ptr<scalar_t>();
    scalar_t* out = p.data_ptr<scalar_t>();
    const int64_t k = l.numel();
    scalar_t m = z[0];
    for (int64_t i = 1; i < k; ++i) m = std::max(m, z[i]);
    scalar_t total = 0;
    for (int64_t i = 0; i < k; ++i) total += (out[i] = std::exp(z[i] - m));
    for (int64_t i = 0; i < k; ++i) out[i] /= total;
  });
  return p;
}

Tensor small_softmax_backward(const Tensor& p, const Tensor& grad_p) {
  auto g = grad_p.contiguous();
  auto out = torch::empty_like(p);
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "small_softmax_backward", [&] {
    const scalar_t* pp = p.data_ptr<scalar_t>();
    const scalar_t* gg = g.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t k = p.numel();
    scalar_t dot = 0;
    for (int64_t i = 0; i < k; ++i) dot += pp[i] * gg[i];
    for (int64_t i = 0; i < k; ++i) o[i] = pp[i] * (gg[i] - dot);
  });
  return out;
}

double bessel_factor(int64_t length, bool unbiased) {
  return unbiased && length > 1 ? double(length) / double(length - 1) : 1.0;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sn_forward_cpu(
    const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& mean_weights,
    const Tensor& var_weights, const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, int64_t bn_mode, double eps, bool unbiased,
    int64_t group, bool softmax) {
  TORCH_CHECK(bn_mode >= 0 && bn_mode <= 2, "sn_mm::switchable_norm: bn_mode must be 0, 1 or 2 "
              "(SyncSN's mode 3 runs in sn_mm::switchable_norm_generic), got ", bn_mode);
  TORCH_CHECK(x.dim() >= 3, "sn_mm::switchable_norm: x must be (N, C, *spatial), got ", x.sizes());
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t length = c > 0 && n > 0 ? x.numel() / (n * c) : 1;
  const auto acc = acc_type(x.scalar_type());
  auto opts = x.options().dtype(acc);
  Tensor mean_in, var_in;
  if (x.numel() == 0) {
    mean_in = torch::zeros({n, c}, opts);
    var_in = torch::zeros({n, c}, opts);
  } else {
    auto moments = instance_moments(x.reshape({n * c, length}));
    mean_in = moments[0].view({n, c});
    var_in = moments[1].view({n, c});
  }
  auto u = var_in * bessel_factor(length, unbiased);
  auto w = weight.to(acc).contiguous(), b = bias.to(acc).contiguous();
  auto a = mean_weights.to(acc).contiguous(), bb = var_weights.to(acc).contiguous();
  if (softmax) {
    a = small_softmax(a);
    bb = small_softmax(bb);
  }
  Tensor bn_mean = torch::empty({0}, opts), bn_var = torch::empty({0}, opts);
  auto count = torch::zeros({2}, opts);
  if (bn_mode == kGivenBN) {
    TORCH_CHECK(running_mean.has_value() && running_var.has_value(),
                "sn_mm::switchable_norm: bn_mode 1 needs running_mean and running_var");
    bn_mean = running_mean->to(acc).clone();
    bn_var = running_var->to(acc).clone();
  } else if (bn_mode == kBatchBN) {
    TORCH_CHECK(n > 0, "sn_mm::switchable_norm: batch statistics (bn_mode 2) of an empty batch");
    count = torch::empty({2}, opts);
    AT_DISPATCH_FLOATING_TYPES(acc, "count", [&] {
      count.data_ptr<scalar_t>()[0] = scalar_t(n);
      count.data_ptr<scalar_t>()[1] = scalar_t(n * length);
    });
  }
  auto mix = mix_forward(mean_in, u, w, b, a, bb, bn_mean, bn_var, bn_mode, eps);
  Tensor y = x.numel() == 0 ? torch::empty_like(x, at::MemoryFormat::Contiguous)
                            : affine(x, mix[0], mix[1]);
  if (bn_mode == kGivenBN) return {y, mean_in, var_in, bn_mean, bn_var, count};
  return {y, mean_in, var_in, mix[2], mix[3], count};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sn_backward_cpu(
    const Tensor& grad_y, const Tensor& x, const Tensor& mean_in, const Tensor& var_in,
    const Tensor& weight, const Tensor& mean_weights, const Tensor& var_weights,
    const Tensor& bn_mean, const Tensor& bn_var, const Tensor& bn_count, int64_t bn_mode,
    double eps, bool unbiased, int64_t group, bool need_input_grad, bool softmax) {
  TORCH_CHECK(bn_mode >= 0 && bn_mode <= 2, "sn_mm::switchable_norm_backward: bn_mode must be "
              "0, 1 or 2, got ", bn_mode);
  const int64_t n = x.size(0), c = x.size(1);
  const int64_t length = c > 0 && n > 0 ? x.numel() / (n * c) : 1;
  const auto acc = mean_in.scalar_type();
  const double factor = bessel_factor(length, unbiased);
  auto g = grad_y.scalar_type() == x.scalar_type() ? grad_y : grad_y.to(x.scalar_type());
  Tensor dot, grad_shift;
  if (x.numel() == 0) {
    dot = torch::zeros({n, c}, mean_in.options());
    grad_shift = torch::zeros({n, c}, mean_in.options());
  } else {
    auto sums = grad_sums(g.reshape({n * c, length}), x.reshape({n * c, length}),
                          mean_in.reshape({-1}).contiguous());
    dot = sums[0].view({n, c});
    grad_shift = sums[1].view({n, c});
  }
  // grad_scale = sum g x = dot + mean * sum g (in place of dot), u = factor * var_in
  auto mean_c = mean_in.contiguous();
  auto grad_scale = dot.contiguous();
  auto u = torch::empty_like(mean_c);
  AT_DISPATCH_FLOATING_TYPES(acc, "sn_backward_pre", [&] {
    scalar_t* gs = grad_scale.data_ptr<scalar_t>();
    const scalar_t* t = grad_shift.data_ptr<scalar_t>();
    const scalar_t* m = mean_c.data_ptr<scalar_t>();
    const scalar_t* v = var_in.contiguous().data_ptr<scalar_t>();
    scalar_t* up = u.data_ptr<scalar_t>();
    const scalar_t f = static_cast<scalar_t>(factor);
    for (int64_t i = 0; i < n * c; ++i) {
      gs[i] += m[i] * t[i];
      up[i] = f * v[i];
    }
  });
  auto w = weight.to(acc).contiguous();
  auto a = mean_weights.to(acc).contiguous(), bb = var_weights.to(acc).contiguous();
  if (softmax) {
    a = small_softmax(a);
    bb = small_softmax(bb);
  }
  auto mix = mix_backward(grad_scale, grad_shift, mean_c, u, w, a, bb,
                          bn_mean.contiguous(), bn_var.contiguous(), bn_mode, eps);
  Tensor grad_x = torch::empty({0}, x.options());
  if (need_input_grad && x.numel() > 0) {
    // dx = scale g + k x + c with k = 2 f g_u / L, c = g_mu / L - mean k (in place)
    auto k = mix[2], cst = mix[1];
    AT_DISPATCH_FLOATING_TYPES(acc, "sn_backward_post", [&] {
      scalar_t* kp = k.data_ptr<scalar_t>();
      scalar_t* cp = cst.data_ptr<scalar_t>();
      const scalar_t* m = mean_c.data_ptr<scalar_t>();
      const scalar_t kf = static_cast<scalar_t>(factor * 2.0 / double(length));
      const scalar_t inv_l = static_cast<scalar_t>(1.0 / double(length));
      for (int64_t i = 0; i < n * c; ++i) {
        kp[i] *= kf;
        cp[i] = cp[i] * inv_l - m[i] * kp[i];
      }
    });
    grad_x = input_grad(g, x, mix[0], k, cst);
  } else if (need_input_grad) {
    grad_x = torch::empty_like(x, at::MemoryFormat::Contiguous);
  }
  auto grad_a = softmax ? small_softmax_backward(a, mix[5]) : mix[5];
  auto grad_b = softmax ? small_softmax_backward(bb, mix[6]) : mix[6];
  return {grad_x, mix[3].to(weight.scalar_type()), mix[4].to(weight.scalar_type()),
          grad_a.to(mean_weights.scalar_type()), grad_b.to(var_weights.scalar_type())};
}

class SwitchableNormFunction : public torch::autograd::Function<SwitchableNormFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const Tensor& x, const Tensor& weight,
      const Tensor& bias, const Tensor& mean_weights, const Tensor& var_weights,
      const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var,
      int64_t bn_mode, double eps, bool unbiased, int64_t group, bool softmax) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("sn_mm::switchable_norm", "")
                         .typed<decltype(sn_forward_cpu)>();
    auto [y, mean_in, var_in, bn_mean, bn_var, count] =
        op.call(x, weight, bias, mean_weights, var_weights, running_mean, running_var, bn_mode,
                eps, unbiased, group, softmax);
    ctx->save_for_backward({x, mean_in, var_in, weight, mean_weights, var_weights, bn_mean,
                            bn_var, count});
    ctx->saved_data["bn_mode"] = bn_mode;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["unbiased"] = unbiased;
    ctx->saved_data["group"] = group;
    ctx->saved_data["softmax"] = softmax;
    ctx->mark_non_differentiable({mean_in, var_in, bn_mean, bn_var, count});
    return {y, mean_in, var_in, bn_mean, bn_var, count};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "SwitchableNorm (sn_mm::switchable_norm) does not support double backward "
                "(torch.autograd.grad(..., create_graph=True) through it); its backward is "
                "written out by hand and is not itself differentiable.");
    auto saved = ctx->get_saved_variables();
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("sn_mm::switchable_norm_backward", "")
                         .typed<decltype(sn_backward_cpu)>();
    const auto& x = saved[0];
    Tensor grad_y = grads[0].defined() ? grads[0] : torch::zeros_like(x);
    const bool need_x = ctx->needs_input_grad(0);
    auto [gx, gw, gb, ga, gv] =
        op.call(grad_y, x, saved[1], saved[2], saved[3], saved[4], saved[5], saved[6],
                saved[7], saved[8], ctx->saved_data["bn_mode"].toInt(),
                ctx->saved_data["eps"].toDouble(), ctx->saved_data["unbiased"].toBool(),
                ctx->saved_data["group"].toInt(), need_x, ctx->saved_data["softmax"].toBool());
    return {need_x ? gx : Tensor(), gw, gb, ga, gv, Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sn_forward_autograd(
    const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& mean_weights,
    const Tensor& var_weights, const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, int64_t bn_mode, double eps, bool unbiased,
    int64_t group, bool softmax) {
  auto out = SwitchableNormFunction::apply(x, weight, bias, mean_weights, var_weights,
                                           running_mean, running_var, bn_mode, eps, unbiased,
                                           group, softmax);
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
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

TORCH_LIBRARY(sn_mm, m) {
  m.def("switchable_norm(Tensor x, Tensor weight, Tensor bias, Tensor mean_weights, "
        "Tensor var_weights, Tensor? running_mean, Tensor? running_var, int bn_mode, "
        "float eps, bool unbiased, int group, bool softmax) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("switchable_norm_backward(Tensor grad_y, Tensor x, Tensor mean_in, Tensor var_in, "
        "Tensor weight, Tensor mean_weights, Tensor var_weights, Tensor bn_mean, Tensor bn_var, "
        "Tensor bn_count, int bn_mode, float eps, bool unbiased, int group, bool input_grad, "
        "bool softmax) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sn_mm, CPU, m) {
  m.impl("switchable_norm", &sn_forward_cpu);
  m.impl("switchable_norm_backward", &sn_backward_cpu);
}

TORCH_LIBRARY_IMPL(sn_mm, Autograd, m) {
  m.impl("switchable_norm", &sn_forward_autograd);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("parallel_threads", &parallel_threads,
        "threads the kernels' parallel loops use (1 when built without OpenMP)");
  m.def("instance_moments", &instance_moments,
        "per-row (mean, biased variance) of an (R, L) tensor, in the accumulation dtype");
  m.def("affine", &affine, "y = scale[r] * x + shift[r] per row of an (R, L) tensor");
  m.def("grad_sums", &grad_sums, "(sum_l g (x - mean[r]), sum_l g) per row");
  m.def("input_grad", &input_grad, "grad_x = a[r] g + k[r] x + c[r] per row");
  // the name of input_grad in sn_mm <= 0.3 (a checkout of that code finds it here)
  m.def("fused_input_grad", &input_grad, "alias of input_grad");
  m.def("mix_forward", &mix_forward, "SN's (N, C) mixing step: (scale, shift, bn_mean, bn_var)");
  m.def("mix_backward", &mix_backward, "backward of mix_forward");
}
