// CUDA kernels of domain_attention (docs/ops.md), mirroring csrc/cpu/domain_attention.cpp.
//
// Forward: the mixed attention matrix P [N, N] = sum_c softmax(r)_c softmax(A_c) is gathered
// from the maps by one kernel (one block per row of P), then out = P @ v for the whole batch is
// one cuBLAS GEMM. Backward: dv = P^T @ g and dP = sum_b g_b v_b^T are cuBLAS GEMMs; one block
// per (map, row) recomputes the softmax row and applies its Jacobian; dM_c is the sum of dA_c
// along its diagonals, gathered per output element (no atomics, deterministic).
// Half and bfloat16 inputs are computed in float32 and rounded once at the end.
#include "cuda_common.cuh"
#include "lowres.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

namespace lowres::cuda {
namespace {

constexpr int kRowThreads = 256;

// Logit of column `col` in patch row (i, j) of a map [2h, 2h]: 0 for prefix columns, else
// map[h - i + k, h - j + l] for patch column (k, l).
template <typename T>
__device__ __forceinline__ T logit_at(const T* map, int64_t h, int64_t num_prefix, int64_t i, int64_t j,
                                      int64_t col) {
  if (col < num_prefix) return T(0);
  const int64_t patch = col - num_prefix, k = patch / h, l = patch % h;
  return map[(h - i + k) * (2 * h) + (h - j + l)];
}

// Max and sum of exp(logit - max) over the N columns of patch row (i, j) of one map, for the
// whole block. A NaN logit makes the max NaN, so the whole softmax row is NaN, as on CPU.
template <typename T>
__device__ void row_softmax_stats(const T* map, int64_t h, int64_t num_prefix, int64_t i, int64_t j, T* scratch,
                                  T& row_max, T& row_sum) {
  const int64_t N = num_prefix + h * h;
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t col = threadIdx.x; col < N; col += blockDim.x) m = max_nan(m, logit_at(map, h, num_prefix, i, j, col));
  row_max = block_reduce(m, MaxNan{}, -std::numeric_limits<T>::infinity(), scratch);
  T s = 0;
  for (int64_t col = threadIdx.x; col < N; col += blockDim.x) {
    s += exp_acc(logit_at(map, h, num_prefix, i, j, col) - row_max);
  }
  row_sum = block_reduce(s, Sum{}, T(0), scratch);
}

// One block per row of P [N, N]. In a prefix row every map's row is a softmax over zeros, so the
// row is sum_c pi_c / N: NaN when a mixing logit is NaN or inf, as in the reference.
template <typename T>
__global__ void build_mixed_attention_kernel(const T* __restrict__ maps, const T* __restrict__ pi,
                                             T* __restrict__ P, int64_t num_maps, int64_t h, int64_t num_prefix) {
  __shared__ T scratch[kWarpSize];
  const int64_t N = num_prefix + h * h, row = blockIdx.x;
  T* out = P + row * N;
  if (row < num_prefix) {
    T pi_sum = 0;
    for (int64_t c = 0; c < num_maps; ++c) pi_sum += pi[c];
    for (int64_t col = threadIdx.x; col < N; col += blockDim.x) out[col] = pi_sum / T(N);
    return;  // uniform over the block: no thread reaches a barrier below
  }
  const int64_t i = (row - num_prefix) / h, j = (row - num_prefix) % h;
  for (int64_t col = threadIdx.x; col < N; col += blockDim.x) out[col] = T(0);
  for (int64_t c = 0; c < num_maps; ++c) {
    const T* map = maps + c * 4 * h * h;
    T row_max, row_sum;
    row_softmax_stats(map, h, num_prefix, i, j, scratch, row_max, row_sum);
    const T scale = pi[c] / row_sum;
    // Each thread only ever touches its own columns of `out`: no barrier needed.
    for (int64_t col = threadIdx.x; col < N; col += blockDim.x) {
      out[col] += exp_acc(logit_at(map, h, num_prefix, i, j, col) - row_max) * scale;
    }
  }
}

// One block per (map c, patch row r): S = softmax(A_c) row r recomputed, then
//   dpi_rows[c, r] = <dP_row, S>,   dA[c, r, patch col] = pi_c S (dP - <dP_row, S>).
template <typename T>
__global__ void softmax_backward_rows_kernel(const T* __restrict__ maps, const T* __restrict__ pi,
                                             const T* __restrict__ dP, T* __restrict__ dA, T* __restrict__ dpi_rows,
                                             int64_t h, int64_t num_prefix) {
  __shared__ T scratch[kWarpSize];
  const int64_t hh = h * h, N = num_prefix + hh;
  const int64_t c = blockIdx.x / hh, r = blockIdx.x % hh, i = r / h, j = r % h;
  const T* map = maps + c * 4 * hh;
  const T* dp = dP + (num_prefix + r) * N;
  T row_max, row_sum;
  row_softmax_stats(map, h, num_prefix, i, j, scratch, row_max, row_sum);
  const T inv_sum = T(1) / row_sum;
  T partial = 0;
  for (int64_t col = threadIdx.x; col < N; col += blockDim.x) {
    partial += dp[col] * (exp_acc(logit_at(map, h, num_prefix, i, j, col) - row_max) * inv_sum);
  }
  const T dot = block_reduce(partial, Sum{}, T(0), scratch);
  if (threadIdx.x == 0) dpi_rows[blockIdx.x] = dot;
  const T p = pi[c];
  T* out = dA + static_cast<int64_t>(blockIdx.x) * hh;
  for (int64_t patch = threadIdx.x; patch < hh; patch += blockDim.x) {
    const int64_t col = num_prefix + patch;
    const T s = exp_acc(logit_at(map, h, num_prefix, i, j, col) - row_max) * inv_sum;
    out[patch] = s * (dp[col] - dot) * p;
  }
}

// dM[c, y, x] = sum over patch rows (i, j) of dA[c, (i, j), (k, l)] with k = i + y - h and
// l = j + x - h inside the grid. One block per map row (c, y), one thread per x.
template <typename T>
__global__ void gather_diagonals_kernel(const T* __restrict__ dA, T* __restrict__ dmaps, int64_t h) {
  const int64_t side = 2 * h, hh = h * h;
  const int64_t c = blockIdx.x / side, y = blockIdx.x % side;
  const T* dA_c = dA + c * hh * hh;
  for (int64_t x = threadIdx.x; x < side; x += blockDim.x) {
    T sum = 0;
    for (int64_t i = 0; i < h; ++i) {
      const int64_t k = i + y - h;
      if (k < 0 || k >= h) continue;
      for (int64_t j = 0; j < h; ++j) {
        const int64_t l = j + x - h;
        if (l < 0 || l >= h) continue;
        sum += dA_c[(i * h + j) * hh + k * h + l];
      }
    }
    dmaps[blockIdx.x * side + x] = sum;
  }
}

void check_cuda(const char* op, const at::Tensor& v) {
  TORCH_CHECK(v.is_cuda(), op, ": the CUDA kernel got v on ", v.device());
}

// pi = softmax(mix_logits) and P, in the accumulation dtype, on the current stream.
std::pair<at::Tensor, at::Tensor> mixed_attention(const at::Tensor& maps, const at::Tensor& mix_logits, int64_t h,
                                                  int64_t num_prefix, at::ScalarType acc) {
  const int64_t N = num_prefix + h * h;
  const at::Tensor maps_acc = maps.to(acc).contiguous();
  const at::Tensor pi = at::softmax(mix_logits.to(acc), 0).contiguous();
  at::Tensor P = at::empty({N, N}, maps_acc.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "domain_attention_cuda_build", [&] {
    build_mixed_attention_kernel<scalar_t><<<N, kRowThreads, 0, stream>>>(
        maps_acc.data_ptr<scalar_t>(), pi.data_ptr<scalar_t>(), P.data_ptr<scalar_t>(), maps.size(0), h, num_prefix);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {pi, P};
}

at::Tensor domain_attention_cuda(const at::Tensor& v, const at::Tensor& maps, const at::Tensor& mix_logits,
                                 int64_t num_prefix_tokens) {
  const int64_t h = check_domain_attention(v, maps, mix_logits, num_prefix_tokens);
  check_cuda("domain_attention", v);
  const c10::cuda::CUDAGuard guard(v.device());
  if (v.numel() == 0) return at::empty_like(v, at::MemoryFormat::Contiguous);
  const auto acc = accumulate_type(v);
  const at::Tensor P = mixed_attention(maps, mix_logits, h, num_prefix_tokens, acc).second;
  return at::matmul(P, v.to(acc)).to(v.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> domain_attention_backward_cuda(
    const at::Tensor& grad, const at::Tensor& v, const at::Tensor& maps, const at::Tensor& mix_logits,
    int64_t num_prefix_tokens, std::array<bool, 3> output_mask) {
  const int64_t h = check_domain_attention_backward(grad, v, maps, mix_logits, num_prefix_tokens);
  check_cuda("domain_attention backward", v);
  const c10::cuda::CUDAGuard guard(v.device());
  const auto acc = accumulate_type(v);
  const int64_t hh = h * h, C = maps.size(0);
  auto [pi, P] = mixed_attention(maps, mix_logits, h, num_prefix_tokens, acc);
  const at::Tensor g = grad.to(acc);

  at::Tensor grad_v = not_requested(v), grad_maps = not_requested(maps), grad_mix = not_requested(mix_logits);
  if (output_mask[0]) grad_v = at::matmul(P.t(), g).to(v.scalar_type());
  if (!output_mask[1] && !output_mask[2]) return {grad_v, grad_maps, grad_mix};

  // dP[i, j] = sum over batch and features of g[b, i, :] v[b, j, :]: one GEMM.
  const at::Tensor dP = at::tensordot(g, v.to(acc), {0, 2}, {0, 2}).contiguous();
  const at::Tensor maps_acc = maps.to(acc).contiguous();
  at::Tensor dA = at::empty({C, hh, hh}, P.options());
  at::Tensor dpi_rows = at::empty({C, hh}, P.options());
  at::Tensor dmaps = at::empty({C, 2 * h, 2 * h}, P.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "domain_attention_cuda_backward", [&] {
    softmax_backward_rows_kernel<scalar_t><<<C * hh, kRowThreads, 0, stream>>>(
        maps_acc.data_ptr<scalar_t>(), pi.data_ptr<scalar_t>(), dP.data_ptr<scalar_t>(), dA.data_ptr<scalar_t>(),
        dpi_rows.data_ptr<scalar_t>(), h, num_prefix_tokens);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (output_mask[1]) {
      const int threads = static_cast<int>(std::min<int64_t>(ceil_div(2 * h, kWarpSize) * kWarpSize, 256));
      gather_diagonals_kernel<scalar_t>
          <<<C * 2 * h, threads, 0, stream>>>(dA.data_ptr<scalar_t>(), dmaps.data_ptr<scalar_t>(), h);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (output_mask[1]) grad_maps = dmaps.to(maps.scalar_type());
  if (output_mask[2]) {
    // Prefix rows are the same uniform row for every map: they shift every dpi_c by one constant,
    // which the softmax Jacobian below cancels, so they are left out.
    const at::Tensor dpi = dpi_rows.sum(1);
    grad_mix = (pi * (dpi - (pi * dpi).sum())).to(mix_logits.scalar_type());
  }
  return {grad_v, grad_maps, grad_mix};
}

}  // namespace

TORCH_LIBRARY_IMPL(lowres, CUDA, m) {
  m.impl("domain_attention", &domain_attention_cuda);
  m.impl("_domain_attention_backward", &domain_attention_backward_cuda);
}

}  // namespace lowres::cuda
