// CPU kernels of domain_attention (SPEC §2).
//
// Forward: one mixed attention matrix P [N, N] = sum_c softmax(r)_c softmax(A_c) is gathered
// from the maps (A_c is Toeplitz: it depends on k - i, l - j only), then out = P @ v for the
// whole batch with one BLAS call. Backward: dv = P^T @ g; dP = sum_b g_b v_b^T; the softmax
// Jacobian per map row gives dA_c, and dM_c is the sum of dA_c along its diagonals, gathered
// per output row (no atomics, deterministic).
#include "lowres.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

namespace lowres {
namespace {

// Writes exp(logit - max) of one patch row of map c into `row` (length N) and returns their sum.
// Prefix columns have logit 0; patch column (k, l) has logit map[h - i + k, h - j + l].
template <typename T>
T exp_row(const T* map, int64_t h, int64_t num_prefix, int64_t i, int64_t j, T* row) {
  using V = at::vec::Vectorized<T>;
  const int64_t side = 2 * h;
  T row_max = num_prefix > 0 ? T(0) : -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < h; ++k) {
    const T* src = map + (h - i + k) * side + (h - j);
    const T m = at::vec::reduce_all<T>([](V a, V b) { return at::vec::maximum(a, b); }, src, h);
    // Written so that a NaN logit propagates instead of being skipped.
    row_max = (m > row_max || m != m) ? m : row_max;
  }
  const T prefix_value = std::exp(-row_max);
  for (int64_t p = 0; p < num_prefix; ++p) row[p] = prefix_value;
  for (int64_t k = 0; k < h; ++k) {
    const T* src = map + (h - i + k) * side + (h - j);
    at::vec::map([row_max](V a) { return (a - V(row_max)).exp(); }, row + num_prefix + k * h, src, h);
  }
  return at::vec::reduce_all<T>([](V a, V b) { return a + b; }, row, num_prefix + h * h);
}

// P [N, N] from the maps [C, 2h, 2h] and the mixing weights pi [C].
template <typename T>
void build_mixed_attention(const T* maps, const T* pi, T* P, int64_t num_maps, int64_t h, int64_t num_prefix) {
  using V = at::vec::Vectorized<T>;
  const int64_t N = num_prefix + h * h, map_size = 4 * h * h;
  std::fill(P, P + num_prefix * N, T(1) / T(N));  // prefix rows: softmax over zeros
  at::parallel_for(0, h * h, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> row(N);
    for (int64_t r = begin; r < end; ++r) {
      T* out = P + (num_prefix + r) * N;
      std::fill(out, out + N, T(0));
      for (int64_t c = 0; c < num_maps; ++c) {
        const T scale = pi[c] / exp_row(maps + c * map_size, h, num_prefix, r / h, r % h, row.data());
        at::vec::map2([scale](V o, V e) { return o + e * V(scale); }, out, out, row.data(), N);
      }
    }
  });
}

at::ScalarType accumulate_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_cpu(const at::Tensor& v) {
  TORCH_CHECK(v.device().is_cpu(), "domain_attention: the CPU kernel got v on ", v.device());
}

// pi = softmax(mix_logits) and P, in the accumulation dtype.
std::pair<at::Tensor, at::Tensor> mixed_attention(const at::Tensor& maps, const at::Tensor& mix_logits, int64_t h,
                                                  int64_t num_prefix, at::ScalarType acc) {
  const int64_t N = num_prefix + h * h;
  at::Tensor maps_acc = maps.to(acc).contiguous();
  at::Tensor pi = at::softmax(mix_logits.to(acc), 0).contiguous();
  at::Tensor P = at::empty({N, N}, maps_acc.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "domain_attention_cpu_build", [&] {
    build_mixed_attention<scalar_t>(maps_acc.data_ptr<scalar_t>(), pi.data_ptr<scalar_t>(), P.data_ptr<scalar_t>(),
                                    maps.size(0), h, num_prefix);
  });
  return {pi, P};
}

at::Tensor domain_attention_cpu(const at::Tensor& v, const at::Tensor& maps, const at::Tensor& mix_logits,
                                int64_t num_prefix_tokens) {
  const int64_t h = check_domain_attention(v, maps, mix_logits, num_prefix_tokens);
  check_cpu(v);
  if (v.numel() == 0) return at::empty_like(v, at::MemoryFormat::Contiguous);
  const auto acc = accumulate_type(v);
  at::Tensor P = mixed_attention(maps, mix_logits, h, num_prefix_tokens, acc).second;
  return at::matmul(P, v.to(acc)).to(v.scalar_type());
}

// dA[c, row, col] = S (pi_c dP - <pi_c dP, S>) on the patch columns of every patch row, and
// dpi_rows[c, row] = <dP_row, S_row>, where S is softmax(A_c) recomputed row by row.
template <typename T>
void softmax_backward_rows(const T* maps, const T* pi, const T* dP, T* dA, T* dpi_rows, int64_t num_maps, int64_t h,
                           int64_t num_prefix) {
  using V = at::vec::Vectorized<T>;
  const int64_t N = num_prefix + h * h, hh = h * h, map_size = 4 * h * h;
  at::parallel_for(0, num_maps * hh, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> s(N);
    for (int64_t cr = begin; cr < end; ++cr) {
      const int64_t c = cr / hh, r = cr % hh;
      const T inv_sum = T(1) / exp_row(maps + c * map_size, h, num_prefix, r / h, r % h, s.data());
      at::vec::map([inv_sum](V a) { return a * V(inv_sum); }, s.data(), s.data(), N);
      const T* dp = dP + (num_prefix + r) * N;
      const T dot = at::vec::map2_reduce_all<T>([](V a, V b) { return a * b; }, [](V a, V b) { return a + b; },
                                                dp, s.data(), N);
      dpi_rows[cr] = dot;
      // dS = pi_c dP, so <dS, S> = pi_c <dP, S>.
      const T p = pi[c];
      at::vec::map2([p, dot](V sv, V g) { return sv * (g - V(dot)) * V(p); }, dA + cr * hh, s.data() + num_prefix,
                    dp + num_prefix, hh);
    }
  });
}

// dM[c, y, x] = sum over (i, j) of dA[c, (i, j), (i + y - h, j + x - h)], one output row per task.
template <typename T>
void gather_diagonals(const T* dA, T* dmaps, int64_t num_maps, int64_t h) {
  const int64_t side = 2 * h, hh = h * h;
  at::parallel_for(0, num_maps * side, 1, [&](int64_t begin, int64_t end) {
    for (int64_t cy = begin; cy < end; ++cy) {
      const int64_t c = cy / side, y = cy % side;
      T* out = dmaps + cy * side;
      std::fill(out, out + side, T(0));
      for (int64_t i = 0; i < h; ++i) {
        const int64_t k = i + y - h;
        if (k < 0 || k >= h) continue;
        for (int64_t j = 0; j < h; ++j) {
          // Columns (k, l) for l = 0..h-1 land on x = h - j + l.
          const T* src = dA + (c * hh + i * h + j) * hh + k * h;
          T* dst = out + (h - j);
          for (int64_t l = 0; l < h; ++l) dst[l] += src[l];
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> domain_attention_backward_cpu(
    const at::Tensor& grad, const at::Tensor& v, const at::Tensor& maps, const at::Tensor& mix_logits,
    int64_t num_prefix_tokens, std::array<bool, 3> output_mask) {
  const int64_t h = check_domain_attention(v, maps, mix_logits, num_prefix_tokens);
  check_cpu(v);
  TORCH_CHECK_VALUE(grad.sizes() == v.sizes(), "domain_attention backward: grad has shape ", grad.sizes(),
                    " but v has ", v.sizes());
  const auto acc = accumulate_type(v);
  const int64_t N = v.size(1), C = maps.size(0);
  auto [pi, P] = mixed_attention(maps, mix_logits, h, num_prefix_tokens, acc);
  at::Tensor g = grad.to(acc);

  at::Tensor grad_v = not_requested(v), grad_maps = not_requested(maps), grad_mix = not_requested(mix_logits);
  if (output_mask[0]) grad_v = at::matmul(P.t(), g).to(v.scalar_type());
  if (!output_mask[1] && !output_mask[2]) return {grad_v, grad_maps, grad_mix};

  at::Tensor dP = at::zeros({N, N}, P.options());
  at::Tensor va = v.to(acc);
  for (int64_t b = 0; b < v.size(0); ++b) dP.addmm_(g[b], va[b].t());
  at::Tensor maps_acc = maps.to(acc).contiguous();
  at::Tensor dA = at::empty({C, h * h, h * h}, P.options());
  at::Tensor dpi_rows = at::empty({C, h * h}, P.options());
  at::Tensor dmaps = at::empty({C, 2 * h, 2 * h}, P.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "domain_attention_cpu_backward", [&] {
    softmax_backward_rows<scalar_t>(maps_acc.data_ptr<scalar_t>(), pi.data_ptr<scalar_t>(), dP.data_ptr<scalar_t>(),
                                    dA.data_ptr<scalar_t>(), dpi_rows.data_ptr<scalar_t>(), C, h, num_prefix_tokens);
    if (output_mask[1]) gather_diagonals<scalar_t>(dA.data_ptr<scalar_t>(), dmaps.data_ptr<scalar_t>(), C, h);
  });
  if (output_mask[1]) grad_maps = dmaps.to(maps.scalar_type());
  if (output_mask[2]) {
    // Prefix rows are the same uniform row for every map: they shift every dpi_c by one constant,
    // which the softmax Jacobian below cancels, so they are left out.
    at::Tensor dpi = dpi_rows.sum(1);
    grad_mix = (pi * (dpi - (pi * dpi).sum())).to(mix_logits.scalar_type());
  }
  return {grad_v, grad_maps, grad_mix};
}

}  // namespace

TORCH_LIBRARY_IMPL(lowres, CPU, m) {
  m.impl("domain_attention", &domain_attention_cpu);
  m.impl("_domain_attention_backward", &domain_attention_backward_cpu);
}

}  // namespace lowres
