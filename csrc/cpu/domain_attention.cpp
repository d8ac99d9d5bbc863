// CPU kernels of domain_attention (docs/ops.md).
//
// Forward: every map's patch-row logits are gathered from the maps (A_c is Toeplitz: it depends
// on k - i, l - j only), softmaxed by ATen's vectorised kernel and mixed into one attention
// matrix P [N, N] = sum_c softmax(r)_c softmax(A_c); then out = P @ v for the whole batch with
// BLAS. Backward: dv = P^T @ g; dP = sum_b g_b v_b^T; the softmax Jacobian per map row gives
// dA_c, and dM_c is the sum of dA_c along its diagonals, gathered per output row of dM (no
// atomics, deterministic).
#include "lowres.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace lowres {
namespace {

// logits[c, (i, j), :] of every patch row of every map: 0 on the prefix columns, and on patch
// column (k, l) the Toeplitz entry map_c[h - i + k, h - j + l] (each crop row is a contiguous copy).
template <typename T>
void gather_patch_logits(const T* maps, T* logits, int64_t num_maps, int64_t h, int64_t num_prefix) {
  const int64_t N = num_prefix + h * h, hh = h * h, side = 2 * h;
  at::parallel_for(0, num_maps * hh, 16, [&](int64_t begin, int64_t end) {
    for (int64_t cr = begin; cr < end; ++cr) {
      const int64_t c = cr / hh, i = (cr % hh) / h, j = cr % h;
      T* out = logits + cr * N;
      std::fill(out, out + num_prefix, T(0));
      for (int64_t k = 0; k < h; ++k) {
        const T* src = maps + c * side * side + (h - i + k) * side + (h - j);
        std::copy(src, src + h, out + num_prefix + k * h);
      }
    }
  });
}

void check_cpu(const at::Tensor& v) {
  TORCH_CHECK(v.device().is_cpu(), "domain_attention: the CPU kernel got v on ", v.device());
}

// What the forward and the backward both need, in the accumulation dtype: the mixing weights
// pi [C], every map's softmaxed patch rows S [C, h*h, N] and the mixed matrix P [N, N].
struct MixedAttention {
  at::Tensor pi, rows, P;
};

MixedAttention mixed_attention(const at::Tensor& maps, const at::Tensor& mix_logits, int64_t h, int64_t num_prefix,
                               at::ScalarType acc) {
  const int64_t C = maps.size(0), hh = h * h, N = num_prefix + hh;
  const at::Tensor maps_acc = maps.to(acc).contiguous();
  at::Tensor logits = at::empty({C, hh, N}, maps_acc.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "domain_attention_cpu_gather", [&] {
    gather_patch_logits<scalar_t>(maps_acc.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), C, h, num_prefix);
  });
  MixedAttention m;
  m.pi = at::softmax(mix_logits.to(acc), 0);
  m.rows = at::softmax(logits, -1);  // ATen's vectorised softmax; NaN and inf behave as in torch.softmax
  m.P = at::empty({N, N}, maps_acc.options());
  // Prefix rows: every map's row is a softmax over zeros, so the row is sum_c pi_c / N -- NaN when a
  // mixing logit is NaN or inf, as in the reference, rather than the constant 1 / N.
  m.P.narrow(0, 0, num_prefix).fill_(m.pi.sum() / static_cast<double>(N));
  m.P.narrow(0, num_prefix, hh).view({1, hh * N}).copy_(at::matmul(m.pi.unsqueeze(0), m.rows.view({C, hh * N})));
  return m;
}

at::Tensor domain_attention_cpu(const at::Tensor& v, const at::Tensor& maps, const at::Tensor& mix_logits,
                                int64_t num_prefix_tokens) {
  const int64_t h = check_domain_attention(v, maps, mix_logits, num_prefix_tokens);
  check_cpu(v);
  if (v.numel() == 0) return at::empty_like(v, at::MemoryFormat::Contiguous);
  const auto acc = accumulate_type(v);
  const MixedAttention m = mixed_attention(maps, mix_logits, h, num_prefix_tokens, acc);
  return at::matmul(m.P, v.to(acc)).to(v.scalar_type());
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
  const int64_t h = check_domain_attention_backward(grad, v, maps, mix_logits, num_prefix_tokens);
  check_cpu(v);
  const auto acc = accumulate_type(v);
  const int64_t N = v.size(1), C = maps.size(0);
  const MixedAttention m = mixed_attention(maps, mix_logits, h, num_prefix_tokens, acc);
  const at::Tensor g = grad.to(acc);

  at::Tensor grad_v = not_requested(v), grad_maps = not_requested(maps), grad_mix = not_requested(mix_logits);
  if (output_mask[0]) grad_v = at::matmul(m.P.t(), g).to(v.scalar_type());
  if (!output_mask[1] && !output_mask[2]) return {grad_v, grad_maps, grad_mix};

  // dP = sum_b g_b v_b^T: one GEMM per image, accumulated in place.
  at::Tensor dP = at::zeros({N, N}, m.P.options());
  const at::Tensor va = v.to(acc);
  for (int64_t b = 0; b < v.size(0); ++b) dP.addmm_(g[b], va[b].t());
  // Softmax Jacobian per map row: with dS_c = pi_c dP, dA_c = S_c (dS_c - <dS_c, S_c>).
  const at::Tensor dP_rows = dP.narrow(0, num_prefix_tokens, h * h);  // prefix rows do not depend on the maps
  const at::Tensor row_dots = (m.rows * dP_rows).sum(-1);          // <dP_row, S_c row>: [C, h*h]
  if (output_mask[1]) {
    const at::Tensor dA = (m.rows.narrow(2, num_prefix_tokens, h * h) *
                           (dP_rows.narrow(1, num_prefix_tokens, h * h) - row_dots.unsqueeze(-1)) *
                           m.pi.view({C, 1, 1}))
                              .contiguous();
    at::Tensor dmaps = at::empty({C, 2 * h, 2 * h}, m.P.options());
    AT_DISPATCH_FLOATING_TYPES(acc, "domain_attention_cpu_backward", [&] {
      gather_diagonals<scalar_t>(dA.data_ptr<scalar_t>(), dmaps.data_ptr<scalar_t>(), C, h);
    });
    grad_maps = dmaps.to(maps.scalar_type());
  }
  if (output_mask[2]) {
    // Prefix rows are the same uniform row for every map: they shift every dpi_c by one constant,
    // which the softmax Jacobian below cancels, so they are left out.
    const at::Tensor dpi = row_dots.sum(1);
    grad_mix = (m.pi * (dpi - (m.pi * dpi).sum())).to(mix_logits.scalar_type());
  }
  return {grad_v, grad_maps, grad_mix};
}

}  // namespace

TORCH_LIBRARY_IMPL(lowres, CPU, m) {
  m.impl("domain_attention", &domain_attention_cpu);
  m.impl("_domain_attention_backward", &domain_attention_backward_cpu);
}

}  // namespace lowres
