// sn_mm's CPU kernel of the Switchable Normalization ops (the other implementation of the
// same math is sn_mm/ops/reference.py, in torch ops, for every other path).
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
//                      bfloat16/float16 rows take one pass shifted by the mean of their
//                      first values where that shift is close to the row's mean
//                      (row_moments_shifted), else the two passes.
//   affine:            y = scale[r] * x + shift[r], written in x's dtype.
//   grad_sums:         (sum_l g (x - mean[r]), sum_l g) per row in one pass.
//   input_grad:        grad_x = a[r] g + k[r] x + c[r], written in x's dtype.
//
// The (N, C) step, forward and backward, each in one call (mix_forward, mix_backward).
#include <torch/extension.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <vector>

// One clone per ISA, picked at load time (GCC function multi-versioning), so a wheel
// built on one x86-64 machine is both portable and vectorized with AVX2/AVX-512. The
// clones target the x86-64 levels (GCC >= 12): v4 adds AVX512BW/VL/DQ and FMA to AVX512F,
// so a bfloat16 pass runs on 32 lanes and narrows them to 16 bits with one vpermt2w and a
// masked blend (NaN), where "avx512f" alone took 8 lanes of AVX2 and a pack/permute/blend
// sequence; v3 adds FMA and F16C to AVX2. The bf16 affine pass at (2, 256, 200, 272), one
// thread, into written memory: 13.5 ms with the "avx512f" clone, 8-11 ms with x86-64-v4.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#if __GNUC__ >= 12
#define SN_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SN_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define SN_MULTIVERSION
#endif

namespace {

constexpr int64_t kBlock = 2048;
// Rows shorter than this (e.g. a (2, 256, 2, 2) input, or FPN levels at batch 1) are
// reduced kRowGroup rows at a time with one accumulator per row, vectorized across the rows:
// a within-row vectorized reduction costs a horizontal add per row, which dominates there.
constexpr int64_t kShortRow = 16;
constexpr int64_t kRowGroup = 8;

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

// One pass for bfloat16/float16 rows: sums of d = x - s and d^2 with the shift s = the
// mean of the row's first kShiftSample values, var = (sum d^2 - (sum d)^2 / L) / L. The
// cancellation costs a factor 1 + (mean - s)^2 / var on float32 rounding; it is accepted
// only where that factor is at most 1.25 (s within half a standard deviation of the mean,
// e.g. ~1.01 for 64 values of one distribution). Otherwise (the row's head unlike the
// rest) the caller runs the exact two passes of row_moments. Converts each value of a
// reduced-precision row, which dominates its cost, once instead of twice.
constexpr int64_t kShiftSample = 64;
constexpr int64_t kShiftBlock = 256;  // float partial sums, added in double
template <typename scalar_t>
inline __attribute__((always_inline)) bool row_moments_shifted(
    const scalar_t* __restrict__ x, int64_t length, double* mean_out, double* var_out) {
  const int64_t head = std::min<int64_t>(length, kShiftSample);
  float shift = 0;
  for (int64_t l = 0; l < head; ++l) shift += Elem<scalar_t>::load(x, l);
  shift /= head;
  double deviation = 0, squares = 0;
  for (int64_t s = 0; s < length; s += kShiftBlock) {
    const int64_t e = std::min(s + kShiftBlock, length);
    float dv = 0, sq = 0;
#pragma omp simd reduction(+ : dv, sq)
    for (int64_t l = s; l < e; ++l) {
      const float d = Elem<scalar_t>::load(x, l) - shift;
      dv += d;
      sq += d * d;
    }
    deviation += dv;
    squares += sq;
  }
  const double offset = deviation / length;
  const double var = (squares - deviation * offset) / length;
  if (!(offset * offset <= 0.25 * var)) return false;  // also NaN: the two passes decide
  *mean_out = double(shift) + offset;
  *var_out = std::max(0.0, var);
  return true;
}

// The row loop lives inside the multi-versioned function, so short rows (RoI-sized
// 7x7 maps: 49 values) pay one ISA dispatch per chunk of rows, not one per row.
// kRowGroup short rows (length < kShortRow) at once, each row the arithmetic of row_moments
// (one block): float partial sums, the mean in double, the corrected second pass.
template <typename scalar_t>
inline __attribute__((always_inline)) void short_rows_moments(
    const scalar_t* __restrict__ x, int64_t length, acc_t<scalar_t>* mean_out,
    acc_t<scalar_t>* var_out) {
  using opmath = acc_t<scalar_t>;
  opmath part[kRowGroup] = {}, sq[kRowGroup] = {}, dv[kRowGroup] = {}, m[kRowGroup];
  double mean[kRowGroup];
  for (int64_t l = 0; l < length; ++l) {
#pragma omp simd
    for (int64_t j = 0; j < kRowGroup; ++j) part[j] += Elem<scalar_t>::load(x, j * length + l);
  }
#pragma omp simd
  for (int64_t j = 0; j < kRowGroup; ++j) {
    mean[j] = double(part[j]) / length;
    m[j] = static_cast<opmath>(mean[j]);
  }
  for (int64_t l = 0; l < length; ++l) {
#pragma omp simd
    for (int64_t j = 0; j < kRowGroup; ++j) {
      const opmath d = Elem<scalar_t>::load(x, j * length + l) - m[j];
      sq[j] += d * d;
      dv[j] += d;
    }
  }
#pragma omp simd
  for (int64_t j = 0; j < kRowGroup; ++j) {
    const double deviation = dv[j], squares = sq[j];
    mean_out[j] = static_cast<opmath>(mean[j] + deviation / length);
    var_out[j] = static_cast<opmath>(
        std::max(0.0, (squares - deviation * deviation / length) / length));
  }
}

template <typename scalar_t>
SN_MULTIVERSION void rows_moments(const scalar_t* __restrict__ x, int64_t begin, int64_t end,
                                  int64_t length, acc_t<scalar_t>* mean, acc_t<scalar_t>* var) {
  if (length < kShortRow) {
    for (; begin + kRowGroup <= end; begin += kRowGroup) {
      short_rows_moments<scalar_t>(x + begin * length, length, mean + begin, var + begin);
    }
  }
  constexpr bool reduced = sizeof(scalar_t) == 2;  // bfloat16, float16
  for (int64_t r = begin; r < end; ++r) {
    double m, v;
    if (!reduced || !row_moments_shifted<scalar_t>(x + r * length, length, &m, &v)) {
      row_moments<scalar_t>(x + r * length, length, &m, &v);
    }
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
  if (length < kShortRow) {  // kRowGroup rows at once, vectorized across them
    for (; begin + kRowGroup <= end; begin += kRowGroup) {
      const scalar_t* gr = g + begin * length;
      const scalar_t* xr = x + begin * length;
      opmath dp[kRowGroup] = {}, gp[kRowGroup] = {};
      for (int64_t l = 0; l < length; ++l) {
#pragma omp simd
        for (int64_t j = 0; j < kRowGroup; ++j) {
          const opmath gv = Elem<scalar_t>::load(gr, j * length + l);
          dp[j] += gv * (Elem<scalar_t>::load(xr, j * length + l) - mean[begin + j]);
          gp[j] += gv;
        }
      }
      for (int64_t j = 0; j < kRowGroup; ++j) {
        dot[begin + j] = dp[j];
        total[begin + j] = gp[j];
      }
    }
  }
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

// ------------------------------------------------------------------ channels_last
// The same four passes over an (N, C, *spatial) input stored channels_last, that is as
// (N, L, C) memory: reductions over l for each (n, c) run over a tile of channels
// at a time (vectorized across channels), elementwise passes over (n, l) rows of C. The
// output keeps the input's memory format, as BatchNorm2d's does; no layout copy is made.
// A tile is the channels [c0, c1) of one sample, reduced over l in blocks of kTileRows rows
// (float partial sums per block, added in double). The tiles are as wide as the threads
// allow (all C channels of a sample on one thread), so a sample is read in one sequential
// sweep. Each channel's sums are its own; the tiling (hence the thread count) can move only
// their last bit, where vector and remainder lanes contract a * b + c differently.
constexpr int64_t kTileRows = 32;
constexpr int64_t kTileAlign = 16;

// fn(i, c0, c1) for every tile of channels [c0, c1) of every sample i, in parallel. Tiles per
// sample: one per thread beyond the samples (n >= threads: one tile of all C channels).
template <typename Fn>
void for_each_channel_tile(int64_t n, int64_t c, const Fn& fn) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_sample = std::max<int64_t>(1, (threads + n - 1) / std::max<int64_t>(n, 1));
  const int64_t aligned = std::max<int64_t>(
      kTileAlign, (c + per_sample - 1) / per_sample / kTileAlign * kTileAlign);
  const int64_t tiles = (c + aligned - 1) / aligned, width = (c + tiles - 1) / tiles;
  at::parallel_for(0, n * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = (t % tiles) * width;
      fn(t / tiles, c0, std::min(c0 + width, c));
    }
  });
}

// A tile's two per-channel sums u, v: float partial sums over a block of kTileRows rows
// (zeroed by start_block, added into the double totals su, sv by end_block), plus a third
// per-channel array `extra` for the caller (a shift, a mean).
template <typename opmath>
struct TileSums {
  explicit TileSums(int64_t w) : w(w), parts(3 * w), totals(2 * w, 0.0) {}
  opmath* u() { return parts.data(); }
  opmath* v() { return parts.data() + w; }
  opmath* extra() { return parts.data() + 2 * w; }
  const double* su() const { return totals.data(); }
  const double* sv() const { return totals.data() + w; }
  void start_block() { std::fill(parts.begin(), parts.begin() + 2 * w, opmath(0)); }
  void end_block() {
    for (int64_t j = 0; j < w; ++j) {
      totals[j] += parts[j];
      totals[w + j] += parts[w + j];
    }
  }
  int64_t w;
  std::vector<opmath> parts;
  std::vector<double> totals;
};

bool is_channels_last(const torch::Tensor& x) {
  if (x.is_contiguous()) return false;
  if (x.dim() == 4) return x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (x.dim() == 5) return x.is_contiguous(at::MemoryFormat::ChannelsLast3d);
  return false;
}

at::MemoryFormat format_of(const torch::Tensor& x) {
  if (!is_channels_last(x)) return at::MemoryFormat::Contiguous;
  return x.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
}

// Mean and biased variance over l of x[n, l, c] for the channels [c0, c1) of sample n, in
// ONE pass over memory (a channels_last tile does not stay in cache between two passes):
// sums of d = x - s and d^2 with the shift s = x[n, 0, c], a sample of the row, so that
// var = (sum d^2 - (sum d)^2 / L) / L does not cancel (d is of the order of the spread).
template <typename scalar_t>
SN_MULTIVERSION void nlc_tile_moments(const scalar_t* __restrict__ x, int64_t length,
                                      int64_t c, int64_t c0, int64_t c1,
                                      acc_t<scalar_t>* mean, acc_t<scalar_t>* var) {
  using opmath = acc_t<scalar_t>;
  const int64_t w = c1 - c0;
  TileSums<opmath> sums(w);
  opmath* __restrict__ part = sums.u();
  opmath* __restrict__ part2 = sums.v();
  opmath* __restrict__ shift = sums.extra();
  for (int64_t j = 0; j < w; ++j) shift[j] = Elem<scalar_t>::load(x + c0, j);
  for (int64_t s = 0; s < length; s += kTileRows) {
    const int64_t e = std::min(s + kTileRows, length);
    sums.start_block();
    for (int64_t l = s; l < e; ++l) {
      const scalar_t* xr = x + l * c + c0;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        const opmath d = Elem<scalar_t>::load(xr, j) - shift[j];
        part[j] += d;
        part2[j] += d * d;
      }
    }
    sums.end_block();
  }
  const double* sum = sums.su();
  const double* sq = sums.sv();
  for (int64_t j = 0; j < w; ++j) {
    mean[c0 + j] = static_cast<opmath>(double(shift[j]) + sum[j] / length);
    var[c0 + j] = static_cast<opmath>(
        std::max(0.0, (sq[j] - sum[j] * sum[j] / length) / length));
  }
}

std::vector<torch::Tensor> nlc_moments(const torch::Tensor& x) {
  const int64_t n = x.size(0), c = x.size(1), length = x.numel() / std::max<int64_t>(n * c, 1);
  auto opts = x.options().dtype(acc_type(x.scalar_type()));
  auto mean = torch::empty({n, c}, opts), var = torch::empty({n, c}, opts);
  SN_DISPATCH(x.scalar_type(), "nlc_moments", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    auto* mp = mean.data_ptr<acc_t<scalar_t>>();
    auto* vp = var.data_ptr<acc_t<scalar_t>>();
    for_each_channel_tile(n, c, [&](int64_t i, int64_t c0, int64_t c1) {
      nlc_tile_moments<scalar_t>(xp + i * length * c, length, c, c0, c1, mp + i * c, vp + i * c);
    });
  });
  return {mean, var};
}

template <typename scalar_t>
SN_MULTIVERSION void nlc_rows_affine(const scalar_t* __restrict__ x, const acc_t<scalar_t>* scale,
                                     const acc_t<scalar_t>* shift, scalar_t* __restrict__ out,
                                     int64_t begin, int64_t end, int64_t length, int64_t c) {
  using opmath = acc_t<scalar_t>;
  for (int64_t r = begin; r < end; ++r) {
    const opmath* a = scale + (r / length) * c;
    const opmath* b = shift + (r / length) * c;
    const scalar_t* xr = x + r * c;
    scalar_t* outr = out + r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      Elem<scalar_t>::store(outr, j, a[j] * Elem<scalar_t>::load(xr, j) + b[j]);
    }
  }
}

torch::Tensor nlc_affine(const torch::Tensor& x, const torch::Tensor& scale,
                         const torch::Tensor& shift) {
  const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
  auto out = torch::empty_like(x);  // keeps channels_last
  SN_DISPATCH(x.scalar_type(), "nlc_affine", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const auto* sp = scale.data_ptr<acc_t<scalar_t>>();
    const auto* bp = shift.data_ptr<acc_t<scalar_t>>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, n * length, row_grain(c), [&](int64_t begin, int64_t end) {
      nlc_rows_affine<scalar_t>(xp, sp, bp, op, begin, end, length, c);
    });
  });
  return out;
}

template <typename scalar_t>
SN_MULTIVERSION void nlc_tile_grad_sums(const scalar_t* __restrict__ g,
                                        const scalar_t* __restrict__ x, int64_t length, int64_t c,
                                        int64_t c0, int64_t c1, const acc_t<scalar_t>* mean,
                                        acc_t<scalar_t>* dot, acc_t<scalar_t>* total) {
  using opmath = acc_t<scalar_t>;
  const int64_t w = c1 - c0;
  TileSums<opmath> sums(w);
  opmath* __restrict__ pd = sums.u();
  opmath* __restrict__ pg = sums.v();
  opmath* __restrict__ m = sums.extra();
  for (int64_t j = 0; j < w; ++j) m[j] = mean[c0 + j];
  for (int64_t s = 0; s < length; s += kTileRows) {
    const int64_t e = std::min(s + kTileRows, length);
    sums.start_block();
    for (int64_t l = s; l < e; ++l) {
      const scalar_t* gr = g + l * c + c0;
      const scalar_t* xr = x + l * c + c0;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        const opmath gv = Elem<scalar_t>::load(gr, j);
        pd[j] += gv * (Elem<scalar_t>::load(xr, j) - m[j]);
        pg[j] += gv;
      }
    }
    sums.end_block();
  }
  for (int64_t j = 0; j < w; ++j) {
    dot[c0 + j] = static_cast<opmath>(sums.su()[j]);
    total[c0 + j] = static_cast<opmath>(sums.sv()[j]);
  }
}

std::vector<torch::Tensor> nlc_grad_sums(const torch::Tensor& g, const torch::Tensor& x,
                                         const torch::Tensor& mean) {
  const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
  auto dot = torch::empty({n, c}, mean.options()), total = torch::empty({n, c}, mean.options());
  SN_DISPATCH(x.scalar_type(), "nlc_grad_sums", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const auto* mp = mean.data_ptr<acc_t<scalar_t>>();
    auto* dp = dot.data_ptr<acc_t<scalar_t>>();
    auto* tp = total.data_ptr<acc_t<scalar_t>>();
    for_each_channel_tile(n, c, [&](int64_t i, int64_t c0, int64_t c1) {
      nlc_tile_grad_sums<scalar_t>(gp + i * length * c, xp + i * length * c, length, c, c0, c1,
                                   mp + i * c, dp + i * c, tp + i * c);
    });
  });
  return {dot, total};
}

template <typename scalar_t>
SN_MULTIVERSION void nlc_rows_input_grad(const scalar_t* __restrict__ g,
                                         const scalar_t* __restrict__ x,
                                         const acc_t<scalar_t>* a, const acc_t<scalar_t>* k,
                                         const acc_t<scalar_t>* cc, scalar_t* __restrict__ out,
                                         int64_t begin, int64_t end, int64_t length, int64_t c) {
  using opmath = acc_t<scalar_t>;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t off = (r / length) * c;
    const opmath* ar = a + off;
    const opmath* kr = k + off;
    const opmath* cr = cc + off;
    const scalar_t* gr = g + r * c;
    const scalar_t* xr = x + r * c;
    scalar_t* outr = out + r * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) {
      Elem<scalar_t>::store(outr, j, ar[j] * Elem<scalar_t>::load(gr, j) +
                                         kr[j] * Elem<scalar_t>::load(xr, j) + cr[j]);
    }
  }
}

torch::Tensor nlc_input_grad(const torch::Tensor& g, const torch::Tensor& x, const torch::Tensor& a,
                             const torch::Tensor& k, const torch::Tensor& cc) {
  const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
  auto out = torch::empty_like(x);
  SN_DISPATCH(x.scalar_type(), "nlc_input_grad", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const auto* ap = a.data_ptr<acc_t<scalar_t>>();
    const auto* kp = k.data_ptr<acc_t<scalar_t>>();
    const auto* cp = cc.data_ptr<acc_t<scalar_t>>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, n * length, row_grain(c), [&](int64_t begin, int64_t end) {
      nlc_rows_input_grad<scalar_t>(gp, xp, ap, kp, cp, op, begin, end, length, c);
    });
  });
  return out;
}

// ------------------------------------------------------------------ the (N, C) step
// The pool of normalizers (sn_mm/ops/pool.py is the table; these are its codes) and the
// modes of the BN branch (sn_mm/ops/functional.py, BN_*). Every branch pools the instance
// moments (mean_in, u) over a set of entries: IN the entry itself, LN every channel of the
// sample, GN the channels of the entry's group, BN every sample of the channel (given as
// running statistics or SyncSN's union-batch moments, or computed from this batch). The
// equations, forward and backward, are in sn_mm/ops/reference.py; these loops compute
// the same in one call each.
constexpr int64_t kIN = 0, kLN = 1, kBN = 2, kGN = 3;
constexpr int64_t kNone = 0, kRunning = 1, kBatch = 2, kSync = 3;

struct Pool {
  std::vector<int64_t> codes;
  int64_t groups = 1;  // of a GN branch
  int64_t bn = -1;     // position of the BN branch, or -1
  int64_t size() const { return static_cast<int64_t>(codes.size()); }
};

Pool make_pool(c10::IntArrayRef codes, int64_t groups, int64_t channels, int64_t bn_mode,
               const char* name) {
  TORCH_CHECK(bn_mode >= kNone && bn_mode <= kSync, name,
              ": bn_mode must be 0 (none), 1 (running), 2 (batch) or 3 (sync), got ", bn_mode);
  Pool p;
  p.codes = codes.vec();
  p.groups = groups;
  TORCH_CHECK(!p.codes.empty(), name, ": the pool of normalizers is empty");
  for (int64_t k = 0; k < p.size(); ++k) {
    const int64_t code = p.codes[k];
    TORCH_CHECK(code >= kIN && code <= kGN, name, ": unknown normalizer code ", code,
                " (IN 0, LN 1, BN 2, GN 3)");
    if (code == kBN) p.bn = k;
    if (code == kGN) {
      TORCH_CHECK(groups >= 1 && channels % groups == 0, name, ": num_groups ", groups,
                  " must divide the ", channels, " channels");
    }
  }
  TORCH_CHECK((p.bn >= 0) == (bn_mode != kNone), name, ": bn_mode ", bn_mode,
              (p.bn >= 0 ? " is none, but the pool has a BN branch"
                         : " needs a BN branch in the pool"));
  return p;
}

// Moments of branch `code` for the C channels of one sample: mu[c], v[c]. The deviations
// from a pooled mean use that mean in double (forward) or rounded to T (`rounded`: the
// backward's recomputation, as sn_mm has always computed it, so results stay bit-identical).
template <typename T>
void sample_branch(int64_t code, int64_t groups, const T* m, const T* u, const T* bm,
                   const T* bv, int64_t c, T* mu, T* v, bool rounded = false) {
  if (code == kIN) {
    std::copy(m, m + c, mu);
    std::copy(u, u + c, v);
    return;
  }
  if (code == kBN) {
    std::copy(bm, bm + c, mu);
    std::copy(bv, bv + c, v);
    return;
  }
  const int64_t g = code == kLN ? 1 : groups, s = c / g;
  for (int64_t q = 0; q < g; ++q) {
    const int64_t lo = q * s, hi = lo + s;
    double sum = 0;
    for (int64_t j = lo; j < hi; ++j) sum += m[j];
    const double mean = rounded ? double(static_cast<T>(sum / s)) : sum / s;
    double sv = 0;
    for (int64_t j = lo; j < hi; ++j) {
      const double d = double(m[j]) - mean;
      sv += double(u[j]) + d * d;
    }
    const T mt = static_cast<T>(mean), vt = static_cast<T>(sv / s);
    std::fill(mu + lo, mu + hi, mt);
    std::fill(v + lo, v + hi, vt);
  }
}

// mean = sum_k a_k mu_k (the first two terms in one expression), likewise the variance.
template <typename T>
inline T mixed(const T* w, const T* values, int64_t k, int64_t c, int64_t j) {
  T out = k > 1 ? w[0] * values[j] + w[1] * values[c + j] : w[0] * values[j];
  for (int64_t i = 2; i < k; ++i) out += w[i] * values[i * c + j];
  return out;
}

template <typename T>
std::vector<torch::Tensor> mix_forward_impl(const torch::Tensor& mean_in, const torch::Tensor& u,
                                            const torch::Tensor& weight, const torch::Tensor& bias,
                                            const torch::Tensor& a, const torch::Tensor& b,
                                            const torch::Tensor& bn_mean_in,
                                            const torch::Tensor& bn_var_in, const Pool& pool,
                                            int64_t mode, double eps) {
  const int64_t n = mean_in.size(0), c = mean_in.size(1), K = pool.size();
  const int64_t a_stride = a.dim() == 2 ? K : 0;  // per-sample (N, K) or shared (K,) weights
  const T* mi = mean_in.data_ptr<T>();
  const T* ui = u.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  const T* bi = bias.data_ptr<T>();
  const T* ap = a.data_ptr<T>();
  const T* bp = b.data_ptr<T>();
  auto opts = mean_in.options();
  auto scale = torch::empty({n, c}, opts), shift = torch::empty({n, c}, opts);
  torch::Tensor bn_mean, bn_var;
  if (mode == kBatch) {
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
  } else if (mode != kNone) {
    bn_mean = bn_mean_in.contiguous();
    bn_var = bn_var_in.contiguous();
  } else {
    bn_mean = torch::empty({0}, opts);
    bn_var = torch::empty({0}, opts);
  }
  const T* bm = mode != kNone ? bn_mean.data_ptr<T>() : nullptr;
  const T* bv = mode != kNone ? bn_var.data_ptr<T>() : nullptr;
  T* sc = scale.data_ptr<T>();
  T* sh = shift.data_ptr<T>();
  const T e = static_cast<T>(eps);
  at::parallel_for(0, n, std::max<int64_t>(1, 32768 / std::max<int64_t>(c * K, 1)),
                   [&](int64_t begin, int64_t end) {
    std::vector<T> mu(K * c), v(K * c);
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t k = 0; k < K; ++k)
        sample_branch<T>(pool.codes[k], pool.groups, mi + i * c, ui + i * c, bm, bv, c,
                         mu.data() + k * c, v.data() + k * c);
      const T* ak = ap + i * a_stride;
      const T* bk = bp + i * a_stride;
      T* srow = sc + i * c;
      T* hrow = sh + i * c;
      for (int64_t j = 0; j < c; ++j) {
        const T mean = mixed(ak, mu.data(), K, c, j);
        const T var = mixed(bk, v.data(), K, c, j);
        const T r = T(1) / std::sqrt(var + e);
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
               const Pool& pool) {
  TORCH_CHECK(mean_in.dim() == 2 && u.sizes() == mean_in.sizes(),
              "mix: mean_in and u must be (N, C), got ", mean_in.sizes(), " and ", u.sizes());
  const auto t = mean_in.scalar_type();
  const int64_t n = mean_in.size(0), c = mean_in.size(1), K = pool.size();
  for (const auto* p : {&mean_in, &u, &weight, &bias, &a, &b}) {
    TORCH_CHECK(p->device().is_cpu() && p->scalar_type() == t && p->is_contiguous(),
                "mix: every tensor must be a contiguous CPU tensor of dtype ", t);
  }
  TORCH_CHECK(weight.numel() == c && bias.numel() == c, "mix: weight and bias need ", c,
              " elements");
  const bool shared = a.dim() == 1 && b.dim() == 1 && a.size(0) == K && b.size(0) == K;
  const bool per_sample = a.dim() == 2 && b.dim() == 2 && a.size(0) == n && a.size(1) == K &&
                          b.sizes() == a.sizes();
  TORCH_CHECK(shared || per_sample, "mix: a pool of ", K, " normalizers needs importance "
              "weights of shape (", K, ",) or (N, ", K, ") = (", n, ", ", K, "), got ",
              a.sizes(), " and ", b.sizes());
}

std::vector<torch::Tensor> mix_forward(const torch::Tensor& mean_in, const torch::Tensor& u,
                                       const torch::Tensor& weight, const torch::Tensor& bias,
                                       const torch::Tensor& a, const torch::Tensor& b,
                                       const torch::Tensor& bn_mean, const torch::Tensor& bn_var,
                                       const Pool& pool, int64_t mode, double eps) {
  check_mix(mean_in, u, weight, bias, a, b, pool);
  TORCH_CHECK(mode != kBatch || mean_in.size(0) > 0, "mix_forward: batch moments of an empty batch");
  std::vector<torch::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(mean_in.scalar_type(), "mix_forward", [&] {
    out = mix_forward_impl<scalar_t>(mean_in, u, weight, bias, a, b, bn_mean, bn_var, pool,
                                     mode, eps);
  });
  return out;
}

// Backward of mix_forward given S = dL/dscale, T = dL/dshift. Returns
// (scale, grad_mean_in, grad_u, grad_weight, grad_bias, grad_a, grad_b, g_mean_bn, g_var_bn)
// where g_*_bn = (sum_n a_BN dmu, sum_n b_BN dsigma2) are the (C,) gradients w.r.t. the
// BN moments. With batch moments (kBatch) their terms are already added to grad_mean_in /
// grad_u; for SyncSN the caller sums them over the ranks and adds them (add_bn_grad).
template <typename T>
std::vector<torch::Tensor> mix_backward_impl(const torch::Tensor& grad_scale,
                                             const torch::Tensor& grad_shift,
                                             const torch::Tensor& mean_in, const torch::Tensor& u,
                                             const torch::Tensor& weight, const torch::Tensor& a,
                                             const torch::Tensor& b, const torch::Tensor& bn_mean,
                                             const torch::Tensor& bn_var, const Pool& pool,
                                             int64_t mode, double eps) {
  const int64_t n = mean_in.size(0), c = mean_in.size(1), K = pool.size();
  const int64_t a_stride = a.dim() == 2 ? K : 0;
  const bool has_bn = mode != kNone;
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
  auto g_a = torch::zeros(a.sizes(), opts), g_b = torch::zeros(b.sizes(), opts);
  auto g_mbn = torch::zeros({has_bn ? c : 0}, opts), g_vbn = torch::zeros({has_bn ? c : 0}, opts);
  T* sc = scale.data_ptr<T>();
  T* gm_out = g_mean_in.data_ptr<T>();
  T* gu_out = g_u.data_ptr<T>();
  const T e = static_cast<T>(eps);
  std::vector<double> gw(c, 0.0), gb(c, 0.0), smu(c, 0.0), svar(c, 0.0);
  std::vector<double> ga(a.numel(), 0.0), gbw(b.numel(), 0.0);
  std::vector<T> mu(K * c), v(K * c), gm(c), gv(c);
  for (int64_t i = 0; i < n; ++i) {
    const T* mrow = mi + i * c;
    const T* urow = ui + i * c;
    const T* Srow = S + i * c;
    const T* Trow = Tg + i * c;
    const T* ak = ap + i * a_stride;
    const T* bk = bp + i * a_stride;
    for (int64_t k = 0; k < K; ++k)
      sample_branch<T>(pool.codes[k], pool.groups, mrow, urow, bm, bv, c, mu.data() + k * c,
                       v.data() + k * c, true);
    T* srow = sc + i * c;
    for (int64_t j = 0; j < c; ++j) {
      const T mean = mixed(ak, mu.data(), K, c, j);
      const T var = mixed(bk, v.data(), K, c, j);
      const T r = T(1) / std::sqrt(var + e);
      const T s = w[j] * r;
      srow[j] = s;
      const T D = Srow[j] - mean * Trow[j];
      gb[j] += Trow[j];
      gw[j] += D * r;
      gm[j] = -s * Trow[j];
      gv[j] = T(-0.5) * D * s * r * r;
    }
    T* gmo = gm_out + i * c;
    T* guo = gu_out + i * c;
    std::fill(gmo, gmo + c, T(0));
    std::fill(guo, guo + c, T(0));
    // Per branch: the importance-weight gradients and the moments' gradients. The sums
    // and products are ordered as sn_mm has always computed them (bit-identical results).
    for (int64_t k = 0; k < K; ++k) {
      const T* muk = mu.data() + k * c;
      const T* vk = v.data() + k * c;
      const int64_t code = pool.codes[k];
      const T wa = ak[k], wb = bk[k];
      double da = 0, db = 0;
      if (code == kIN) {
        for (int64_t j = 0; j < c; ++j) {
          da += gm[j] * muk[j];
          db += gv[j] * vk[j];
          gmo[j] = gmo[j] + wa * gm[j];
          guo[j] = guo[j] + wb * gv[j];
        }
      } else if (code == kBN) {  // summed over the samples; weighted after for shared weights
        for (int64_t j = 0; j < c; ++j) {
          if (a_stride) {
            da += gm[j] * muk[j];
            db += gv[j] * vk[j];
            smu[j] += wa * gm[j];
            svar[j] += wb * gv[j];
          } else {
            smu[j] += gm[j];
            svar[j] += gv[j];
          }
        }
      } else {  // LN, GN: the pooled entries are the channels of a group of this sample
        const int64_t g = code == kLN ? 1 : pool.groups, s = c / g;
        const T inv_s = T(1) / T(s);
        for (int64_t q = 0; q < g; ++q) {
          const int64_t lo = q * s, hi = lo + s;
          double sm = 0, sv = 0;
          for (int64_t j = lo; j < hi; ++j) {
            sm += gm[j];
            sv += gv[j];
          }
          da += sm * muk[lo];
          db += sv * vk[lo];
          const T gml = static_cast<T>(sm), gvl = static_cast<T>(sv);
          for (int64_t j = lo; j < hi; ++j) {
            gmo[j] = gmo[j] + wa * inv_s * gml;
            gmo[j] = gmo[j] + T(2) * wb * inv_s * gvl * (mrow[j] - muk[j]);
            guo[j] = guo[j] + wb * inv_s * gvl;
          }
        }
      }
      ga[i * a_stride + k] += da;
      gbw[i * a_stride + k] += db;
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
  for (int64_t i = 0; i < a.numel(); ++i) {
    gap[i] = static_cast<T>(ga[i]);
    gbb[i] = static_cast<T>(gbw[i]);
  }
  if (has_bn) {
    T* gmb = g_mbn.data_ptr<T>();
    T* gvb = g_vbn.data_ptr<T>();
    const int64_t kb = pool.bn;
    double ga_bn = 0, gb_bn = 0;
    for (int64_t j = 0; j < c; ++j) {
      if (a_stride) {  // per-sample weights: already weighted, and da/db done per sample
        gmb[j] = static_cast<T>(smu[j]);
        gvb[j] = static_cast<T>(svar[j]);
      } else {
        ga_bn += smu[j] * double(bm[j]);
        gb_bn += svar[j] * double(bv[j]);
        gmb[j] = static_cast<T>(smu[j]) * ap[kb];
        gvb[j] = static_cast<T>(svar[j]) * bp[kb];
      }
    }
    if (!a_stride) {
      gap[kb] = static_cast<T>(ga_bn);
      gbb[kb] = static_cast<T>(gb_bn);
    }
    if (mode == kBatch) {  // batch moments of these n samples: flow back into them
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
                                        const torch::Tensor& bn_var, const Pool& pool,
                                        int64_t mode, double eps) {
  check_mix(mean_in, u, weight, weight, a, b, pool);
  TORCH_CHECK(grad_scale.sizes() == mean_in.sizes() && grad_shift.sizes() == mean_in.sizes() &&
                  grad_scale.scalar_type() == mean_in.scalar_type() &&
                  grad_shift.scalar_type() == mean_in.scalar_type() &&
                  grad_scale.is_contiguous() && grad_shift.is_contiguous(),
              "mix_backward: grad_scale and grad_shift must be contiguous (N, C) tensors like mean_in");
  if (mode != kNone) {
    TORCH_CHECK(bn_mean.numel() == mean_in.size(1) && bn_var.numel() == mean_in.size(1) &&
                    bn_mean.scalar_type() == mean_in.scalar_type() &&
                    bn_var.scalar_type() == mean_in.scalar_type() && bn_mean.is_contiguous() &&
                    bn_var.is_contiguous(),
                "mix_backward: bn_mean and bn_var must be contiguous (C,) tensors like mean_in");
  }
  std::vector<torch::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(mean_in.scalar_type(), "mix_backward", [&] {
    out = mix_backward_impl<scalar_t>(grad_scale, grad_shift, mean_in, u, weight, a, b, bn_mean,
                                      bn_var, pool, mode, eps);
  });
  return out;
}

// ------------------------------------------------------------------ the ops
// sn_mm::switchable_norm and sn_mm::switchable_norm_backward: schemas, CPU kernels and the
// one autograd kernel. sn_mm/ops/functional.py registers their fake kernels and their
// kernels for other devices (sn_mm/ops/reference.py, or Triton on CUDA), and documents
// the arguments. SyncSN (bn_mode 3) calls the two collectives, themselves ops
// (sn_mm::sync_batch_moments, sn_mm::sync_bn_grad, sn_mm/ops/distributed.py), through
// the dispatcher: one in forward, one in backward.
using torch::Tensor;

// Softmax over the last dimension of (K,) or (N, K) logits, and its backward
// p * (g - <p, g>) per row.
Tensor small_softmax(const Tensor& logits) {
  auto l = logits.contiguous();
  auto p = torch::empty_like(l);
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "small_softmax", [&] {
    const int64_t k = l.size(-1), rows = k > 0 ? l.numel() / k : 0;
    for (int64_t row = 0; row < rows; ++row) {
      const scalar_t* z = l.data_ptr<scalar_t>() + row * k;
      scalar_t* out = p.data_ptr<scalar_t>() + row * k;
      scalar_t m = z[0];
      for (int64_t i = 1; i < k; ++i) m = std::max(m, z[i]);
      scalar_t total = 0;
      for (int64_t i = 0; i < k; ++i) total += (out[i] = std::exp(z[i] - m));
      for (int64_t i = 0; i < k; ++i) out[i] /= total;
    }
  });
  return p;
}

Tensor small_softmax_backward(const Tensor& p, const Tensor& grad_p) {
  auto g = grad_p.contiguous();
  auto out = torch::empty_like(p);
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "small_softmax_backward", [&] {
    const int64_t k = p.size(-1), rows = k > 0 ? p.numel() / k : 0;
    for (int64_t row = 0; row < rows; ++row) {
      const scalar_t* pp = p.data_ptr<scalar_t>() + row * k;
      const scalar_t* gg = g.data_ptr<scalar_t>() + row * k;
      scalar_t* o = out.data_ptr<scalar_t>() + row * k;
      scalar_t dot = 0;
      for (int64_t i = 0; i < k; ++i) dot += pp[i] * gg[i];
      for (int64_t i = 0; i < k; ++i) o[i] = pp[i] * (gg[i] - dot);
    }
  });
  return out;
}

double bessel_factor(int64_t length, bool unbiased) {
  return unbiased && length > 1 ? double(length) / double(length - 1) : 1.0;
}

// f * t for a contiguous float tensor t (t itself when f is 1), without a TensorIterator
Tensor scaled(const Tensor& t, double f) {
  if (f == 1.0) return t;
  auto out = torch::empty_like(t);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "scaled", [&] {
    const scalar_t* in = t.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(f);
    for (int64_t i = 0; i < t.numel(); ++i) o[i] = in[i] * s;
  });
  return out;
}

int64_t spatial_length(const Tensor& x) {
  int64_t length = 1;
  for (int64_t d = 2; d < x.dim(); ++d) length *= x.size(d);
  return length;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sn_forward_cpu(
    const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& mean_weights,
    const Tensor& var_weights, const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, c10::IntArrayRef pool_codes, int64_t num_groups,
    int64_t bn_mode, double eps, bool unbiased, int64_t group, bool softmax) {
  TORCH_CHECK(x.dim() >= 3, "sn_mm::switchable_norm: x must be (N, C, *spatial), got ", x.sizes());
  const int64_t n = x.size(0), c = x.size(1);
  const Pool pool = make_pool(pool_codes, num_groups, c, bn_mode, "sn_mm::switchable_norm");
  const int64_t length = spatial_length(x);
  const auto acc = acc_type(x.scalar_type());
  auto opts = x.options().dtype(acc);
  Tensor mean_in, var_in;
  if (x.numel() == 0) {
    mean_in = torch::zeros({n, c}, opts);
    var_in = torch::zeros({n, c}, opts);
  } else if (is_channels_last(x)) {
    auto moments = nlc_moments(x);
    mean_in = moments[0];
    var_in = moments[1];
  } else {
    auto moments = instance_moments(x.reshape({n * c, length}));
    mean_in = moments[0].view({n, c});
    var_in = moments[1].view({n, c});
  }
  auto u = scaled(var_in, bessel_factor(length, unbiased));
  auto w = weight.to(acc).contiguous(), b = bias.to(acc).contiguous();
  auto a = mean_weights.to(acc).contiguous(), bb = var_weights.to(acc).contiguous();
  if (softmax) {
    a = small_softmax(a);
    bb = small_softmax(bb);
  }
  Tensor bn_mean = torch::empty({0}, opts), bn_var = torch::empty({0}, opts);
  auto count = torch::zeros({2}, opts);
  if (bn_mode == kRunning) {
    TORCH_CHECK(running_mean.has_value() && running_var.has_value(),
                "sn_mm::switchable_norm: bn_mode 1 (running) needs running_mean and running_var");
    bn_mean = running_mean->to(acc).clone();
    bn_var = running_var->to(acc).clone();
  } else if (bn_mode == kBatch) {
    TORCH_CHECK(n > 0, "sn_mm::switchable_norm: batch statistics (bn_mode 2) of an empty batch");
    count = torch::empty({2}, opts);
    AT_DISPATCH_FLOATING_TYPES(acc, "count", [&] {
      count.data_ptr<scalar_t>()[0] = scalar_t(n);
      count.data_ptr<scalar_t>()[1] = scalar_t(n * length);
    });
  } else if (bn_mode == kSync) {  // the one forward collective
    static auto sync = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("sn_mm::sync_batch_moments", "")
                           .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                                     int64_t, int64_t)>();
    std::tie(bn_mean, bn_var, count) = sync.call(mean_in, u, length, group);
  }
  auto mix = mix_forward(mean_in, u, w, b, a, bb, bn_mean, bn_var, pool, bn_mode, eps);
  Tensor y = x.numel() == 0  ? torch::empty_like(x)
             : is_channels_last(x) ? nlc_affine(x, mix[0], mix[1])
                                   : affine(x, mix[0], mix[1]);
  return {y, mean_in, var_in, mix[2], mix[3], count};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sn_backward_cpu(
    const Tensor& grad_y, const Tensor& x, const Tensor& mean_in, const Tensor& var_in,
    const Tensor& weight, const Tensor& mean_weights, const Tensor& var_weights,
    const Tensor& bn_mean, const Tensor& bn_var, const Tensor& bn_count,
    c10::IntArrayRef pool_codes, int64_t num_groups, int64_t bn_mode, double eps, bool unbiased,
    int64_t group, bool need_input_grad, bool softmax) {
  const int64_t n = x.size(0), c = x.size(1);
  const Pool pool = make_pool(pool_codes, num_groups, c, bn_mode,
                              "sn_mm::switchable_norm_backward");
  const int64_t length = spatial_length(x);
  const auto acc = mean_in.scalar_type();
  const double factor = bessel_factor(length, unbiased);
  // g in x's dtype and memory format (a copy only when the incoming gradient differs)
  const bool nlc = is_channels_last(x);
  Tensor g = grad_y.scalar_type() == x.scalar_type() ? grad_y : grad_y.to(x.scalar_type());
  if (nlc ? !g.is_contiguous(format_of(x)) : !g.is_contiguous()) g = g.contiguous(format_of(x));
  Tensor dot, grad_shift;
  if (x.numel() == 0) {
    dot = torch::zeros({n, c}, mean_in.options());
    grad_shift = torch::zeros({n, c}, mean_in.options());
  } else if (nlc) {
    auto sums = nlc_grad_sums(g, x, mean_in.contiguous());
    dot = sums[0];
    grad_shift = sums[1];
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
  auto mix = mix_backward(grad_scale, grad_shift, mean_c, u, w, a, bb, bn_mean.contiguous(),
                          bn_var.contiguous(), pool, bn_mode, eps);
  if (bn_mode == kSync) {  // the one backward collective, then the union-batch terms
    static auto sync = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("sn_mm::sync_bn_grad", "")
                           .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&,
                                                             int64_t)>();
    auto [g_mean_bn, g_var_bn] = sync.call(mix[7], mix[8], group);
    AT_DISPATCH_FLOATING_TYPES(acc, "sn_sync_terms", [&] {
      const scalar_t total = bn_count.to(acc).contiguous().data_ptr<scalar_t>()[0];
      const scalar_t* gmb = g_mean_bn.contiguous().data_ptr<scalar_t>();
      const scalar_t* gvb = g_var_bn.contiguous().data_ptr<scalar_t>();
      const scalar_t* bm = bn_mean.contiguous().data_ptr<scalar_t>();
      const scalar_t* m = mean_c.data_ptr<scalar_t>();
      scalar_t* gmo = mix[1].data_ptr<scalar_t>();
      scalar_t* guo = mix[2].data_ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < c; ++j) {
          const scalar_t tv = gvb[j] * scalar_t(2) / total;
          gmo[i * c + j] += gmb[j] / total + (m[i * c + j] - bm[j]) * tv;
          guo[i * c + j] += tv * scalar_t(0.5);
        }
    });
  }
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
    grad_x = nlc ? nlc_input_grad(g, x, mix[0], k, cst) : input_grad(g, x, mix[0], k, cst);
  } else if (need_input_grad) {
    grad_x = torch::empty_like(x);
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
      c10::IntArrayRef pool, int64_t num_groups, int64_t bn_mode, double eps, bool unbiased,
      int64_t group, bool softmax) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("sn_mm::switchable_norm", "")
                         .typed<decltype(sn_forward_cpu)>();
    auto [y, mean_in, var_in, bn_mean, bn_var, count] =
        op.call(x, weight, bias, mean_weights, var_weights, running_mean, running_var, pool,
                num_groups, bn_mode, eps, unbiased, group, softmax);
    ctx->save_for_backward({x, mean_in, var_in, weight, mean_weights, var_weights, bn_mean,
                            bn_var, count});
    ctx->saved_data["pool"] = pool.vec();
    ctx->saved_data["num_groups"] = num_groups;
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
    const auto pool = ctx->saved_data["pool"].toIntVector();
    auto [gx, gw, gb, ga, gv] =
        op.call(grad_y, x, saved[1], saved[2], saved[3], saved[4], saved[5], saved[6],
                saved[7], saved[8], pool, ctx->saved_data["num_groups"].toInt(),
                ctx->saved_data["bn_mode"].toInt(), ctx->saved_data["eps"].toDouble(),
                ctx->saved_data["unbiased"].toBool(), ctx->saved_data["group"].toInt(), need_x,
                ctx->saved_data["softmax"].toBool());
    return {need_x ? gx : Tensor(), gw, gb, ga, gv, Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sn_forward_autograd(
    const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& mean_weights,
    const Tensor& var_weights, const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, c10::IntArrayRef pool, int64_t num_groups,
    int64_t bn_mode, double eps, bool unbiased, int64_t group, bool softmax) {
  auto out = SwitchableNormFunction::apply(x, weight, bias, mean_weights, var_weights,
                                           running_mean, running_var, pool, num_groups, bn_mode,
                                           eps, unbiased, group, softmax);
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

// ------------------------------------------------------------------ EN's passes
// Exemplar Normalization (sn_mm/ops/exemplar_norm.py) is SN with per-sample ratios from a
// small network over the instance moments, so its (N, C) step is torch code; its full-size
// work is SN's four passes, exposed here for (N, C, *spatial) inputs, contiguous or
// channels_last (the output keeps the input's memory format), with (N, C) statistics and
// coefficients in the accumulation dtype (float64 for float64 inputs, float32 otherwise):
//   channel_moments(x)               -> (mean, biased var) per (n, c)
//   channel_affine(x, a, b)          -> a[n, c] * x + b[n, c]
//   channel_grad_sums(g, x, mean)    -> (sum_l g (x - mean[n, c]), sum_l g)
//   channel_input_grad(g, x, a, k, c)-> a[n, c] * g + k[n, c] * x + c[n, c]
void check_channels(const Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, ": CPU tensors only, got ", x.device());
  TORCH_CHECK(x.dim() >= 3 && x.numel() > 0, name,
              ": expected a non-empty (N, C, *spatial) tensor, got ", x.sizes());
}

// g in x's dtype and memory format (a copy only when it differs)
Tensor like_x(const Tensor& g, const Tensor& x, const char* name) {
  TORCH_CHECK(g.sizes() == x.sizes(), name, ": g and x must have one shape, got ", g.sizes(),
              " and ", x.sizes());
  Tensor out = g.scalar_type() == x.scalar_type() ? g : g.to(x.scalar_type());
  const bool nlc = is_channels_last(x);
  if (nlc ? !out.is_contiguous(format_of(x)) : !out.is_contiguous()) {
    out = out.contiguous(format_of(x));
  }
  return out;
}

std::vector<Tensor> channel_moments(const Tensor& x) {
  check_channels(x, "channel_moments");
  const int64_t n = x.size(0), c = x.size(1);
  if (is_channels_last(x)) return nlc_moments(x);
  auto moments = instance_moments(x.reshape({n * c, spatial_length(x)}));
  return {moments[0].view({n, c}), moments[1].view({n, c})};
}

Tensor channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift) {
  check_channels(x, "channel_affine");
  const auto acc = acc_type(x.scalar_type());
  check_coeff(scale, x.size(0) * x.size(1), acc, "channel_affine: scale");
  check_coeff(shift, x.size(0) * x.size(1), acc, "channel_affine: shift");
  return is_channels_last(x) ? nlc_affine(x, scale, shift) : affine(x, scale, shift);
}

std::vector<Tensor> channel_grad_sums(const Tensor& g_in, const Tensor& x, const Tensor& mean) {
  check_channels(x, "channel_grad_sums");
  const int64_t n = x.size(0), c = x.size(1);
  check_coeff(mean, n * c, acc_type(x.scalar_type()), "channel_grad_sums: mean");
  Tensor g = like_x(g_in, x, "channel_grad_sums");
  if (is_channels_last(x)) return nlc_grad_sums(g, x, mean);
  const int64_t length = spatial_length(x);
  auto sums = grad_sums(g.reshape({n * c, length}), x.reshape({n * c, length}),
                        mean.reshape({-1}));
  return {sums[0].view({n, c}), sums[1].view({n, c})};
}

Tensor channel_input_grad(const Tensor& g_in, const Tensor& x, const Tensor& a, const Tensor& k,
                          const Tensor& c) {
  check_channels(x, "channel_input_grad");
  Tensor g = like_x(g_in, x, "channel_input_grad");
  const int64_t rows = x.size(0) * x.size(1);
  const auto acc = acc_type(x.scalar_type());
  check_coeff(a, rows, acc, "channel_input_grad: a");
  check_coeff(k, rows, acc, "channel_input_grad: k");
  check_coeff(c, rows, acc, "channel_input_grad: c");
  return is_channels_last(x) ? nlc_input_grad(g, x, a, k, c) : input_grad(g, x, a, k, c);
}

// ------------------------------------------------------------------ EN's (N, C) step
// The same math as sn_mm/ops/exemplar_step.py (which documents it), in loops over (n, c):
// branches k = IN, LN (, BN); r_k = (v_k + eps)^-1/2; descriptors d_k = (m - mu_k) r_k;
// z[n, k, j] = sum_t d_k[j span + t] w_k[t]; R = z z^T / J; logits = W R + b; softmax per
// head; 'outputs': scale = g sum l_k r_k, shift = b - g sum l_k mu_k r_k; 'statistics':
// mean = sum a_k mu_k, var = sum b_k v_k, scale = g (var + eps)^-1/2, shift = b - mean scale.
template <typename T>
struct EnBranches {  // mu_k, v_k of sample n at channel c
  const T *m, *u, *bm, *bv;
  const T* mu_ln;
  const T* v_ln;
  int64_t c, k;
  inline T mu(int64_t kk, int64_t n, int64_t j) const {
    return kk == 0 ? m[n * c + j] : kk == 1 ? mu_ln[n] : bm[j];
  }
  inline T v(int64_t kk, int64_t n, int64_t j) const {
    return kk == 0 ? u[n * c + j] : kk == 1 ? v_ln[n] : bv[j];
  }
};

// 'statistics': mean = sum_k a_k mu_k, rho = (sum_k b_k v_k + eps)^-1/2 at (n, j); with
// S, T given, also their gradients dmean = -T g rho, dvar = g (S - T mean) (-rho^3 / 2).
template <typename T>
struct EnMixed {
  T mean, rho;
  EnMixed(const EnBranches<T>& br, const T* ratios, int64_t n, int64_t j, T eps) {
    T var = 0;
    mean = 0;
    for (int64_t kk = 0; kk < br.k; ++kk) {
      mean += ratios[kk] * br.mu(kk, n, j);
      var += ratios[br.k + kk] * br.v(kk, n, j);
    }
    rho = T(1) / std::sqrt(var + eps);
  }
  T dmean(T t, T g) const { return -t * g * rho; }
  T dvar(T s, T t, T g) const { return g * (s - t * mean) * T(-0.5) * rho * rho * rho; }
};

void check_en(const Tensor& t, int64_t numel, torch::ScalarType dt, const char* what) {
  TORCH_CHECK(t.numel() == numel && t.scalar_type() == dt && t.is_contiguous() &&
                  t.device().is_cpu(),
              "en_step: ", what, " must be a contiguous CPU tensor of ", numel,
              " elements of dtype ", dt, ", got ", t.sizes(), " ", t.scalar_type());
}

template <typename T>
void en_softmax(const T* logits, T* p, int64_t k) {
  T mx = logits[0];
  for (int64_t i = 1; i < k; ++i) mx = std::max(mx, logits[i]);
  double total = 0;
  for (int64_t i = 0; i < k; ++i) total += std::exp(double(logits[i] - mx));
  for (int64_t i = 0; i < k; ++i) p[i] = static_cast<T>(std::exp(double(logits[i] - mx)) / total);
}

// forward: returns (scale, shift, z, relation, ratios, mu_ln, v_ln)
std::vector<Tensor> en_step_forward(const Tensor& m, const Tensor& u, const Tensor& bn_mean,
                                    const Tensor& bn_var, const Tensor& gamma,
                                    const Tensor& beta, const Tensor& reduce_weight,
                                    const Tensor& ratio_weight, const Tensor& ratio_bias,
                                    double eps, int64_t span, bool outputs) {
  TORCH_CHECK(m.dim() == 2 && m.size(0) > 0 && m.size(1) > 0,
              "en_step: mean_in must be a non-empty (N, C) tensor, got ", m.sizes());
  const int64_t n = m.size(0), c = m.size(1);
  const auto dt = m.scalar_type();
  TORCH_CHECK(dt == torch::kFloat || dt == torch::kDouble, "en_step: float32/64 statistics, got ", dt);
  const bool bn = bn_mean.numel() > 0;
  const int64_t k = bn ? 3 : 2, h = outputs ? 1 : 2;
  TORCH_CHECK(span >= 1, "en_step: span must be >= 1, got ", span);
  const int64_t blocks = (c + span - 1) / span;
  check_en(m, n * c, dt, "mean_in");
  check_en(u, n * c, dt, "u");
  if (bn) {
    check_en(bn_mean, c, dt, "bn_mean");
    check_en(bn_var, c, dt, "bn_var");
  }
  check_en(gamma, c, dt, "weight");
  check_en(beta, c, dt, "bias");
  check_en(reduce_weight, k * span, dt, "reduce_weight");
  check_en(ratio_weight, h * k * k * k, dt, "ratio_weight");
  check_en(ratio_bias, h * k, dt, "ratio_bias");
  auto opts = m.options();
  auto scale = torch::empty({n, c}, opts), shift = torch::empty({n, c}, opts);
  auto z = torch::zeros({n, k, blocks}, opts), rel = torch::empty({n, k * k}, opts);
  auto ratios = torch::empty({n, h * k}, opts);
  auto mu_ln = torch::empty({n}, opts), v_ln = torch::empty({n}, opts);
  AT_DISPATCH_FLOATING_TYPES(dt, "en_step_forward", [&] {
    using T = scalar_t;
    const T* mp = m.data_ptr<T>();
    const T* up = u.data_ptr<T>();
    const T* wr = reduce_weight.data_ptr<T>();
    const T* wp = ratio_weight.data_ptr<T>();
    const T* bp = ratio_bias.data_ptr<T>();
    const T* gp = gamma.data_ptr<T>();
    const T* betap = beta.data_ptr<T>();
    T* mlp = mu_ln.data_ptr<T>();
    T* vlp = v_ln.data_ptr<T>();
    EnBranches<T> br{mp, up, bn ? bn_mean.data_ptr<T>() : nullptr,
                     bn ? bn_var.data_ptr<T>() : nullptr, mlp, vlp, c, k};
    T* zp = z.data_ptr<T>();
    T* rp = rel.data_ptr<T>();
    T* lp = ratios.data_ptr<T>();
    T* sp = scale.data_ptr<T>();
    T* shp = shift.data_ptr<T>();
    const T e = static_cast<T>(eps);
    std::vector<T> logits(h * k);
    for (int64_t i = 0; i < n; ++i) {
      double sm = 0, su = 0, sd = 0;
      for (int64_t j = 0; j < c; ++j) { sm += mp[i * c + j]; su += up[i * c + j]; }
      const T ml = static_cast<T>(sm / c);
      for (int64_t j = 0; j < c; ++j) { const T d = mp[i * c + j] - ml; sd += double(d) * d; }
      mlp[i] = ml;
      vlp[i] = static_cast<T>(su / c) + static_cast<T>(sd / c);
      T* zi = zp + i * k * blocks;
      for (int64_t kk = 1; kk < k; ++kk) {  // the IN descriptor is 0
        for (int64_t j = 0; j < c; ++j) {
          const T r = T(1) / std::sqrt(br.v(kk, i, j) + e);
          zi[kk * blocks + j / span] += (mp[i * c + j] - br.mu(kk, i, j)) * r * wr[kk * span + j % span];
        }
      }
      T* ri = rp + i * k * k;
      for (int64_t a = 0; a < k; ++a)
        for (int64_t b = 0; b < k; ++b) {
          double acc = 0;
          for (int64_t q = 0; q < blocks; ++q) acc += double(zi[a * blocks + q]) * zi[b * blocks + q];
          ri[a * k + b] = static_cast<T>(acc / blocks);
        }
      for (int64_t o = 0; o < h * k; ++o) {
        double acc = bp[o];
        for (int64_t q = 0; q < k * k; ++q) acc += double(wp[o * k * k + q]) * ri[q];
        logits[o] = static_cast<T>(acc);
      }
      T* li = lp + i * h * k;
      for (int64_t hh = 0; hh < h; ++hh) en_softmax(logits.data() + hh * k, li + hh * k, k);
      for (int64_t j = 0; j < c; ++j) {
        if (outputs) {
          T a_sum = 0, b_sum = 0;
          for (int64_t kk = 0; kk < k; ++kk) {
            const T r = T(1) / std::sqrt(br.v(kk, i, j) + e);
            a_sum += li[kk] * r;
            b_sum += li[kk] * br.mu(kk, i, j) * r;
          }
          sp[i * c + j] = gp[j] * a_sum;
          shp[i * c + j] = betap[j] - gp[j] * b_sum;
        } else {
          const EnMixed<T> mix(br, li, i, j, e);
          const T s = gp[j] * mix.rho;
          sp[i * c + j] = s;
          shp[i * c + j] = betap[j] - mix.mean * s;
        }
      }
    }
  });
  return {scale, shift, z, rel, ratios, mu_ln, v_ln};
}

// backward: returns (d mean_in, d u, d weight, d bias, d reduce_weight, d ratio_weight,
// d ratio_bias); batch_bn: the BN moments are this batch's (gradients flow through them)
std::vector<Tensor> en_step_backward(const Tensor& grad_scale, const Tensor& grad_shift,
                                     const Tensor& m, const Tensor& u, const Tensor& bn_mean,
                                     const Tensor& bn_var, bool batch_bn, const Tensor& gamma,
                                     const Tensor& reduce_weight, const Tensor& ratio_weight,
                                     const Tensor& z, const Tensor& rel, const Tensor& ratios,
                                     const Tensor& mu_ln, const Tensor& v_ln, double eps,
                                     int64_t span, bool outputs) {
  const int64_t n = m.size(0), c = m.size(1);
  const auto dt = m.scalar_type();
  const bool bn = bn_mean.numel() > 0;
  const int64_t k = bn ? 3 : 2, h = outputs ? 1 : 2;
  const int64_t blocks = (c + span - 1) / span;
  check_en(grad_scale, n * c, dt, "grad_scale");
  check_en(grad_shift, n * c, dt, "grad_shift");
  check_en(z, n * k * blocks, dt, "z");
  check_en(rel, n * k * k, dt, "relation");
  check_en(ratios, n * h * k, dt, "ratios");
  auto opts = m.options();
  auto dm = torch::empty({n, c}, opts), du = torch::empty({n, c}, opts);
  auto dgamma = torch::zeros({c}, opts), dbeta = torch::zeros({c}, opts);
  auto dwr = torch::zeros({k, 1, span}, opts);
  auto dW = torch::zeros({h * k, k * k}, opts), db = torch::zeros({h * k}, opts);
  AT_DISPATCH_FLOATING_TYPES(dt, "en_step_backward", [&] {
    using T = scalar_t;
    const T* S = grad_scale.data_ptr<T>();
    const T* Tg = grad_shift.data_ptr<T>();
    const T* mp = m.data_ptr<T>();
    const T* gp = gamma.data_ptr<T>();
    const T* wr = reduce_weight.data_ptr<T>();
    const T* wp = ratio_weight.data_ptr<T>();
    const T* zp = z.data_ptr<T>();
    const T* rp = rel.data_ptr<T>();
    const T* lp = ratios.data_ptr<T>();
    const T* mlp = mu_ln.data_ptr<T>();
    EnBranches<T> br{mp, u.data_ptr<T>(), bn ? bn_mean.data_ptr<T>() : nullptr,
                     bn ? bn_var.data_ptr<T>() : nullptr, mlp, v_ln.data_ptr<T>(), c, k};
    T* dmp = dm.data_ptr<T>();
    T* dup = du.data_ptr<T>();
    T* dgp = dgamma.data_ptr<T>();
    T* dbp = dbeta.data_ptr<T>();
    T* dwrp = dwr.data_ptr<T>();
    T* dWp = dW.data_ptr<T>();
    T* dbb = db.data_ptr<T>();
    const T e = static_cast<T>(eps);
    std::vector<double> g_bn_mu(bn ? c : 0, 0.0), g_bn_v(bn ? c : 0, 0.0);
    std::vector<double> dl(h * k);
    std::vector<T> dlogits(h * k), dR(k * k), dz(k * blocks);
    for (int64_t i = 0; i < n; ++i) {
      const T* li = lp + i * h * k;
      std::fill(dl.begin(), dl.end(), 0.0);
      for (int64_t j = 0; j < c; ++j) {  // the mixing step's backward, reduced over c
        const int64_t ij = i * c + j;
        dbp[j] += Tg[ij];
        if (outputs) {
          T a_sum = 0, b_sum = 0;
          const T da = S[ij] * gp[j], dbm = Tg[ij] * gp[j];
          for (int64_t kk = 0; kk < k; ++kk) {
            const T r = T(1) / std::sqrt(br.v(kk, i, j) + e), mu = br.mu(kk, i, j);
            a_sum += li[kk] * r;
            b_sum += li[kk] * mu * r;
            dl[kk] += double(da * r - dbm * mu * r);
          }
          dgp[j] += S[ij] * a_sum - Tg[ij] * b_sum;
        } else {
          const EnMixed<T> mix(br, li, i, j, e);
          const T dmean = mix.dmean(Tg[ij], gp[j]);
          const T dvar = mix.dvar(S[ij], Tg[ij], gp[j]);
          dgp[j] += mix.rho * (S[ij] - Tg[ij] * mix.mean);
          for (int64_t kk = 0; kk < k; ++kk) {
            dl[kk] += double(dmean * br.mu(kk, i, j));
            dl[k + kk] += double(dvar * br.v(kk, i, j));
          }
        }
      }
      for (int64_t hh = 0; hh < h; ++hh) {  // softmax backward per head
        double dot = 0;
        for (int64_t kk = 0; kk < k; ++kk) dot += double(li[hh * k + kk]) * dl[hh * k + kk];
        for (int64_t kk = 0; kk < k; ++kk)
          dlogits[hh * k + kk] = static_cast<T>(li[hh * k + kk] * (dl[hh * k + kk] - dot));
      }
      const T* ri = rp + i * k * k;
      for (int64_t q = 0; q < k * k; ++q) {  // linear layer
        double acc = 0;
        for (int64_t o = 0; o < h * k; ++o) {
          dWp[o * k * k + q] += dlogits[o] * ri[q];
          acc += double(dlogits[o]) * wp[o * k * k + q];
        }
        dR[q] = static_cast<T>(acc);
      }
      for (int64_t o = 0; o < h * k; ++o) dbb[o] += dlogits[o];
      const T* zi = zp + i * k * blocks;
      for (int64_t a = 0; a < k; ++a)  // relation R = z z^T / J
        for (int64_t q = 0; q < blocks; ++q) {
          double acc = 0;
          for (int64_t b = 0; b < k; ++b) acc += double(dR[a * k + b] + dR[b * k + a]) * zi[b * blocks + q];
          dz[a * blocks + q] = static_cast<T>(acc / blocks);
        }
      double g_ln_mu = 0, g_ln_v = 0;
      for (int64_t j = 0; j < c; ++j) {  // descriptors, mixing terms, back to the branches
        const int64_t ij = i * c + j;
        T dmij = 0, duij = 0;
        T da = 0, dbm = 0, dmean = 0, dvar = 0;
        if (outputs) {
          da = S[ij] * gp[j];
          dbm = Tg[ij] * gp[j];
        } else {
          const EnMixed<T> mix(br, li, i, j, e);
          dmean = mix.dmean(Tg[ij], gp[j]);
          dvar = mix.dvar(S[ij], Tg[ij], gp[j]);
        }
        for (int64_t kk = 0; kk < k; ++kk) {
          const T mu = br.mu(kk, i, j), r = T(1) / std::sqrt(br.v(kk, i, j) + e);
          const T centred = mp[ij] - mu;
          const T zgrad = dz[kk * blocks + j / span];
          const T ddesc = zgrad * wr[kk * span + j % span];
          dwrp[kk * span + j % span] += zgrad * centred * r;
          const T dcent = ddesc * r;
          T dr = ddesc * centred, dmu = -dcent, dv = 0;
          if (outputs) {
            dr += li[kk] * (da - dbm * mu);
            dmu += -li[kk] * dbm * r;
          } else {
            dmu += li[kk] * dmean;
            dv += li[k + kk] * dvar;
          }
          dv += dr * T(-0.5) * r * r * r;
          dmij += dcent;
          if (kk == 0) { dmij += dmu; duij += dv; }
          else if (kk == 1) { g_ln_mu += dmu; g_ln_v += dv; }
          else { g_bn_mu[j] += dmu; g_bn_v[j] += dv; }
        }
        dmp[ij] = dmij;
        dup[ij] = duij;
      }
      const T gm = static_cast<T>(g_ln_mu / c), gv = static_cast<T>(g_ln_v / c);
      for (int64_t j = 0; j < c; ++j) {  // LN's moments pool the sample's channels
        dmp[i * c + j] += gm + T(2) * gv * (mp[i * c + j] - mlp[i]);
        dup[i * c + j] += gv;
      }
    }
    if (bn && batch_bn) {  // BN's moments pool the batch
      const T* bm = bn_mean.data_ptr<T>();
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < c; ++j) {
          const T gm = static_cast<T>(g_bn_mu[j] / n), gv = static_cast<T>(g_bn_v[j] / n);
          dmp[i * c + j] += gm + T(2) * gv * (mp[i * c + j] - bm[j]);
          dup[i * c + j] += gv;
        }
    }
  });
  return {dm, du, dgamma, dbeta, dwr, dW, db};
}

// Threads at::parallel_for can use here: 1 if this library was built without OpenMP.
int64_t parallel_threads() {
#ifdef _OPENMP
  return at::get_num_threads();
#else
  return 1;
#endif
}

// sn_mm::switchable_norm called from Python without boxing: the same dispatcher call (so
// autograd, every device's kernel and the fake/meta kernels behave as through torch.ops),
// minus torch.ops' per-call parsing of 14 arguments into IValues and back (several us,
// SN's fixed cost on small layers). sn_mm/ops/functional.py uses it in eager mode when no
// argument or mode overrides __torch_function__; otherwise it calls torch.ops.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> switchable_norm_call(
    const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& mean_weights,
    const Tensor& var_weights, const std::optional<Tensor>& running_mean,
    const std::optional<Tensor>& running_var, std::vector<int64_t> pool, int64_t num_groups,
    int64_t bn_mode, double eps, bool unbiased, int64_t group, bool softmax) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sn_mm::switchable_norm", "")
                       .typed<decltype(sn_forward_cpu)>();
  return op.call(x, weight, bias, mean_weights, var_weights, running_mean, running_var, pool,
                 num_groups, bn_mode, eps, unbiased, group, softmax);
}

}  // namespace

TORCH_LIBRARY(sn_mm, m) {
  m.def("switchable_norm(Tensor x, Tensor weight, Tensor bias, Tensor mean_weights, "
        "Tensor var_weights, Tensor? running_mean, Tensor? running_var, int[] pool, "
        "int num_groups, int bn_mode, float eps, bool unbiased, int group, bool softmax) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("switchable_norm_backward(Tensor grad_y, Tensor x, Tensor mean_in, Tensor var_in, "
        "Tensor weight, Tensor mean_weights, Tensor var_weights, Tensor bn_mean, Tensor bn_var, "
        "Tensor bn_count, int[] pool, int num_groups, int bn_mode, float eps, bool unbiased, "
        "int group, bool input_grad, bool softmax) "
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
  m.def("switchable_norm", &switchable_norm_call,
        "torch.ops.sn_mm.switchable_norm.default, called without boxing (eager fast path)");
  m.def("parallel_threads", &parallel_threads,
        "threads the kernels' parallel loops use (1 when built without OpenMP)");
  m.def("channel_moments", &channel_moments,
        "(mean, biased variance) per (n, c) of an (N, C, *) CPU tensor (EN's moment pass)");
  m.def("channel_affine", &channel_affine, "a[n, c] * x + b[n, c] (EN's affine pass)");
  m.def("channel_grad_sums", &channel_grad_sums,
        "(sum g (x - mean[n, c]), sum g) per (n, c) (EN's backward sums)");
  m.def("channel_input_grad", &channel_input_grad,
        "a[n, c] * g + k[n, c] * x + c[n, c] (EN's input gradient)");
  m.def("en_step_forward", &en_step_forward,
        "EN's (N, C) step (sn_mm/ops/exemplar_step.py): (scale, shift, z, relation, "
        "ratios, mu_ln, v_ln)");
  m.def("en_step_backward", &en_step_backward,
        "backward of en_step_forward: (d mean_in, d u, d weight, d bias, d reduce_weight, "
        "d ratio_weight, d ratio_bias)");
}
