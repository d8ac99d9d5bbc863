// CUDA kernels of subkernel_tokenize (SPEC §1), mirroring csrc/cpu/subkernel_tokenize.cpp.
//
// Everything before the pool is linear in x, so the T sub-kernel convolutions are one u x u,
// stride-u convolution with the combined kernel K_eff = sum_t softmax(w)_t k_t, built once per
// call on the device by the shared kernel algebra (csrc/subkernel_kernels.cpp). The convolutions run as tiled shared-memory GEMMs that read the image
// straight from global memory (implicit im2col: no column buffer exists):
//   forward      tokens = bias + blend max_window(K_eff cols_fine) + K_patch cols_patch, the max
//                pool (with its uint8 argmax) fused into the epilogue, so the fine map is never
//                stored; with pool="avg" the op is a single q x q, stride-q GEMM;
//   kernel grad  dK = sum over pixels of dfine cols^T, split over the pixels into per-block
//                partial sums (no atomics) that one reduction adds up;
//   input grad   dx = K^T dfine scattered back to the pixels (patches do not overlap).
// dfine (the gradient routed to each window's argmax) is read from grad and indices on the fly.
// Half and bfloat16 are computed in float32 and rounded once at the end.
#include "cuda_common.cuh"
#include "lowres.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

namespace lowres::cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Block GEMM: a kTile x kTile tile of C = A B per block of kSide x kSide threads, each thread
// owning a kMicro x kMicro micro-tile (rows ty + kSide i, columns tx + kSide j), the reduction
// staged through shared memory kDepth at a time.

constexpr int kTile = 64;
constexpr int kDepth = 16;
constexpr int kSide = 16;
constexpr int kThreads = kSide * kSide;
constexpr int kMicro = kTile / kSide;

template <typename acc_t>
struct GemmStage {
  acc_t a[kDepth][kTile + 1];  // A[row, k] stored k-major; the +1 spreads the stores over banks
  acc_t b[kDepth][kTile + 1];  // B[k, col]
};

// acc[i][j] += sum over k in [k_begin, k_end) of A(row0 + ty + kSide i, k) B(k, col0 + tx + kSide j).
// load_a(row, k) and load_b(k, col) return 0 for rows and columns outside the matrix; the
// reduction bound is handled here. Every thread of the block must call it.
template <typename acc_t, typename LoadA, typename LoadB>
__device__ void block_gemm(const LoadA& load_a, const LoadB& load_b, int64_t row0, int64_t col0, int64_t k_begin,
                           int64_t k_end, GemmStage<acc_t>& stage, acc_t (&acc)[kMicro][kMicro]) {
  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kDepth) {
    // A is staged with k fastest across threads and B with its column fastest: the order in
    // which the operands below lie in memory.
    for (int e = threadIdx.x; e < kDepth * kTile; e += kThreads) {
      const int kk = e % kDepth, rr = e / kDepth;
      stage.a[kk][rr] = k0 + kk < k_end ? load_a(row0 + rr, k0 + kk) : acc_t(0);
    }
    for (int e = threadIdx.x; e < kDepth * kTile; e += kThreads) {
      const int cc = e % kTile, kk = e / kTile;
      stage.b[kk][cc] = k0 + kk < k_end ? load_b(k0 + kk, col0 + cc) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kDepth; ++kk) {
      acc_t a[kMicro], b[kMicro];
#pragma unroll
      for (int i = 0; i < kMicro; ++i) a[i] = stage.a[kk][ty + kSide * i];
#pragma unroll
      for (int j = 0; j < kMicro; ++j) b[j] = stage.b[kk][tx + kSide * j];
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
#pragma unroll
        for (int j = 0; j < kMicro; ++j) acc[i][j] += a[i] * b[j];
      }
    }
    __syncthreads();
  }
}

template <typename acc_t>
__device__ __forceinline__ void zero(acc_t (&acc)[kMicro][kMicro]) {
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
#pragma unroll
    for (int j = 0; j < kMicro; ++j) acc[i][j] = acc_t(0);
  }
}

// ---------------------------------------------------------------------------------------------
// The image as the columns of a convolution with kernel = stride = `size`, for the window x
// window pixels under each token: element (token, w, k), with token = (b, I, J), w = di r + dj
// and k = (c, i, j), is x[b, c, (I r + di) size + i, (J r + dj) size + j].
// Fine pixels: size = u, window = q / u. Whole patches: size = q, window = 1.
struct Columns {
  int64_t channels, height, width, grid_h, grid_w, size, window;

  __host__ __device__ int64_t depth() const { return channels * size * size; }
  __host__ __device__ int64_t windows() const { return window * window; }

  __device__ __forceinline__ int64_t offset(int64_t token, int64_t w, int64_t k) const {
    const int64_t per_image = grid_h * grid_w;
    const int64_t b = token / per_image, I = (token % per_image) / grid_w, J = token % grid_w;
    const int64_t c = k / (size * size), i = (k / size) % size, j = k % size;
    const int64_t y = (I * window + w / window) * size + i, x = (J * window + w % window) * size + j;
    return ((b * channels + c) * height + y) * width + x;
  }
};

Columns fine_columns(const SubkernelGeometry& g) {
  return {g.channels, g.height, g.width, g.grid_h, g.grid_w, g.sub, g.ratio};
}

Columns patch_columns(const SubkernelGeometry& g) {
  return {g.channels, g.height, g.width, g.grid_h, g.grid_w, g.patch, 1};
}

// The gradient reaching fine pixel p = token * windows + w of channel d: scale * grad[b, d, I, J],
// routed (for max pooling, when `indices` is given) only to the window's argmax.
template <typename scalar_t, typename acc_t>
struct PixelGrad {
  const scalar_t* grad;    // [B, D, H/q, W/q]
  const uint8_t* indices;  // same shape, or null
  acc_t scale;
  int64_t dim, per_image, windows;

  __device__ __forceinline__ acc_t operator()(int64_t p, int64_t d) const {
    const int64_t token = p / windows, w = p % windows;
    const int64_t index = ((token / per_image) * dim + d) * per_image + token % per_image;
    if (indices != nullptr && indices[index] != w) return acc_t(0);
    return scale * static_cast<acc_t>(grad[index]);
  }
};

// ---------------------------------------------------------------------------------------------
// Kernels.

// tokens[b, d, I, J] = bias[d] + blend max_w (K_fine cols_fine(token, w))[d] + (K_patch cols_patch(token))[d],
// with the argmax w written to `indices`. Either kernel may be absent (null). One block per
// kTile channels (rows) x kTile tokens (columns): consecutive threads write consecutive tokens.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    tokenize_forward_kernel(const scalar_t* __restrict__ x, Columns fine, Columns patch,
                            const acc_t* __restrict__ fine_kernel, const acc_t* __restrict__ patch_kernel,
                            const scalar_t* __restrict__ bias, acc_t blend, int64_t dim, int64_t num_tokens,
                            scalar_t* __restrict__ out, uint8_t* __restrict__ indices) {
  __shared__ GemmStage<acc_t> stage;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
  acc_t acc[kMicro][kMicro], best[kMicro][kMicro];
  uint8_t arg[kMicro][kMicro];

  if (fine_kernel != nullptr) {
    const int64_t depth = fine.depth();
    const auto load_kernel = [&](int64_t d, int64_t k) { return d < dim ? fine_kernel[d * depth + k] : acc_t(0); };
    for (int64_t w = 0; w < fine.windows(); ++w) {
      const auto load_image = [&](int64_t k, int64_t token) {
        return token < num_tokens ? static_cast<acc_t>(x[fine.offset(token, w, k)]) : acc_t(0);
      };
      zero(acc);
      block_gemm(load_kernel, load_image, row0, col0, 0, depth, stage, acc);
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
#pragma unroll
        for (int j = 0; j < kMicro; ++j) {
          // The first NaN wins and stays, as in max_pool2d and the CPU kernel.
          const acc_t candidate = acc[i][j];
          if (w == 0 || ((candidate > best[i][j] || candidate != candidate) && best[i][j] == best[i][j])) {
            best[i][j] = candidate;
            arg[i][j] = static_cast<uint8_t>(w);
          }
        }
      }
    }
  }
  if (patch_kernel != nullptr) {
    const int64_t depth = patch.depth();
    const auto load_kernel = [&](int64_t d, int64_t k) { return d < dim ? patch_kernel[d * depth + k] : acc_t(0); };
    const auto load_image = [&](int64_t k, int64_t token) {
      return token < num_tokens ? static_cast<acc_t>(x[patch.offset(token, 0, k)]) : acc_t(0);
    };
    zero(acc);
    block_gemm(load_kernel, load_image, row0, col0, 0, depth, stage, acc);
  }

  const int64_t per_image = fine.grid_h * fine.grid_w;
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const int64_t d = row0 + ty + kSide * i;
    if (d >= dim) continue;
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t token = col0 + tx + kSide * j;
      if (token >= num_tokens) continue;
      const int64_t index = ((token / per_image) * dim + d) * per_image + token % per_image;
      acc_t value = bias != nullptr ? static_cast<acc_t>(bias[d]) : acc_t(0);
      if (fine_kernel != nullptr) {
        value += blend * best[i][j];
        indices[index] = arg[i][j];
      }
      if (patch_kernel != nullptr) value += acc[i][j];
      out[index] = static_cast<scalar_t>(value);
    }
  }
}

// partial[z, d, k] = sum over the pixels p of split z of G(p, d) cols(p, k): the gradient of the
// kernel that multiplies `cols`. One block per kTile channels (rows) x kTile kernel entries
// (columns) x one split of the pixels; the splits are added up by the caller.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    kernel_grad_kernel(const scalar_t* __restrict__ x, Columns columns, PixelGrad<scalar_t, acc_t> pixel_grad,
                       int64_t num_pixels, int64_t chunk, acc_t* __restrict__ partial) {
  __shared__ GemmStage<acc_t> stage;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t begin = static_cast<int64_t>(blockIdx.z) * chunk, end = std::min(num_pixels, begin + chunk);
  const int64_t dim = pixel_grad.dim, depth = columns.depth(), windows = columns.windows();
  const auto load_grad = [&](int64_t d, int64_t p) { return d < dim ? pixel_grad(p, d) : acc_t(0); };
  const auto load_image = [&](int64_t p, int64_t k) {
    return k < depth ? static_cast<acc_t>(x[columns.offset(p / windows, p % windows, k)]) : acc_t(0);
  };
  acc_t acc[kMicro][kMicro];
  zero(acc);
  block_gemm(load_grad, load_image, row0, col0, begin, end, stage, acc);

  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
  acc_t* out = partial + static_cast<int64_t>(blockIdx.z) * dim * depth;
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const int64_t d = row0 + ty + kSide * i;
    if (d >= dim) continue;
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t k = col0 + tx + kSide * j;
      if (k < depth) out[d * depth + k] = acc[i][j];
    }
  }
}

// dx[pixels of cols(p, k)] += sum_d G(p, d) kernel[d, k]. Each (p, k) is a distinct pixel of x
// (the patches do not overlap), so the plain += races with nothing. One block per kTile pixels p
// (rows) x kTile kernel entries (columns).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    input_grad_kernel(Columns columns, PixelGrad<scalar_t, acc_t> pixel_grad, const acc_t* __restrict__ kernel,
                      int64_t num_pixels, acc_t* __restrict__ dx) {
  __shared__ GemmStage<acc_t> stage;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile, col0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t depth = columns.depth(), windows = columns.windows();
  const auto load_grad = [&](int64_t p, int64_t d) { return p < num_pixels ? pixel_grad(p, d) : acc_t(0); };
  const auto load_kernel = [&](int64_t d, int64_t k) { return k < depth ? kernel[d * depth + k] : acc_t(0); };
  acc_t acc[kMicro][kMicro];
  zero(acc);
  block_gemm(load_grad, load_kernel, row0, col0, 0, pixel_grad.dim, stage, acc);

  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
    const int64_t p = row0 + ty + kSide * i;
    if (p >= num_pixels) continue;
#pragma unroll
    for (int j = 0; j < kMicro; ++j) {
      const int64_t k = col0 + tx + kSide * j;
      if (k < depth) dx[columns.offset(p / windows, p % windows, k)] += acc[i][j];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

at::ScalarType accumulate_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

template <typename acc_t>
const acc_t* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor> subkernel_tokenize_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                           const at::Tensor& logits,
                                                           const std::optional<at::Tensor>& bias, int64_t sub,
                                                           int64_t step, c10::string_view pool, double blend) {
  const SubkernelGeometry g = check_subkernel_tokenize(x, weight, logits, bias, sub, step, pool, blend);
  TORCH_CHECK(x.is_cuda(), "subkernel_tokenize: the CUDA kernel got x on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const bool max_pool = g.pool == Pool::Max;
  at::Tensor out = at::empty({g.batch, g.dim, g.grid_h, g.grid_w}, x.options());
  at::Tensor indices = at::zeros(max_pool ? at::IntArrayRef{g.batch, g.dim, g.grid_h, g.grid_w} : at::IntArrayRef{0},
                                 x.options().dtype(at::kByte));
  if (out.numel() == 0) return {out, indices};

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const SubkernelKernels k = make_subkernel_kernels(g, weight, logits, accumulate_type(x));
  const at::Tensor xc = x.contiguous();
  const at::Tensor bc = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const int64_t num_tokens = g.batch * g.grid_h * g.grid_w;
  const dim3 grid = launch_grid("subkernel_tokenize", ceil_div(num_tokens, kTile), ceil_div(g.dim, kTile));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "subkernel_tokenize_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    tokenize_forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        xc.data_ptr<scalar_t>(), fine_columns(g), patch_columns(g), data_or_null<acc_t>(k.fine),
        data_or_null<acc_t>(k.patch), bc.defined() ? bc.data_ptr<scalar_t>() : nullptr, static_cast<acc_t>(g.blend),
        g.dim, num_tokens, out.data_ptr<scalar_t>(), k.fine.defined() ? indices.data_ptr<uint8_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, indices};
}

// dL/d(kernel multiplying `columns`) [D, depth], summed over every pixel.
template <typename scalar_t, typename acc_t>
at::Tensor kernel_grad(const at::Tensor& x, const Columns& columns, const PixelGrad<scalar_t, acc_t>& pixel_grad,
                       int64_t num_tokens, cudaStream_t stream) {
  const int64_t dim = pixel_grad.dim, depth = columns.depth(), num_pixels = num_tokens * columns.windows();
  const int64_t output_blocks = ceil_div(depth, kTile) * ceil_div(dim, kTile);
  // Split the pixels so that the GPU holds a few waves of blocks, each split a few stages long.
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  const int64_t wanted_splits = std::max<int64_t>(1, ceil_div(4 * static_cast<int64_t>(sms), output_blocks));
  const int64_t chunk =
      ceil_div(std::max<int64_t>(ceil_div(num_pixels, wanted_splits), 4 * kDepth), kDepth) * kDepth;
  const int64_t splits = ceil_div(num_pixels, chunk);
  at::Tensor partial = at::empty({splits, dim, depth}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const dim3 grid = launch_grid("subkernel_tokenize backward", ceil_div(depth, kTile), ceil_div(dim, kTile), splits);
  kernel_grad_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(x.data_ptr<scalar_t>(), columns, pixel_grad,
                                                                     num_pixels, chunk, partial.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial.sum(0);
}

template <typename scalar_t, typename acc_t>
void input_grad(const Columns& columns, const PixelGrad<scalar_t, acc_t>& pixel_grad, const at::Tensor& kernel,
                int64_t num_tokens, at::Tensor& dx, cudaStream_t stream) {
  const int64_t num_pixels = num_tokens * columns.windows();
  const dim3 grid =
      launch_grid("subkernel_tokenize backward", ceil_div(num_pixels, kTile), ceil_div(columns.depth(), kTile));
  input_grad_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(columns, pixel_grad, kernel.data_ptr<acc_t>(),
                                                                    num_pixels, dx.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> subkernel_tokenize_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& logits,
    const at::Tensor& indices, int64_t sub, int64_t step, c10::string_view pool, double blend,
    std::array<bool, 4> output_mask) {
  const SubkernelGeometry g = check_subkernel_tokenize_backward(grad, x, weight, logits, indices, sub, step, pool, blend);
  TORCH_CHECK(x.is_cuda(), "subkernel_tokenize backward: the CUDA kernel got x on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  if (auto trivial = subkernel_grads_without_kernels(grad, x, weight, logits, output_mask)) return *trivial;
  const bool want_x = output_mask[0], want_weight = output_mask[1], want_logits = output_mask[2];

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc = accumulate_type(x);
  const SubkernelKernels k = make_subkernel_kernels(g, weight, logits, acc, /*image_kernels=*/want_x);
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = grad.to(x.scalar_type()).contiguous();
  const at::Tensor ic = uses_fine_kernel(g) ? indices.contiguous() : at::Tensor();
  const bool want_kernel_grads = want_weight || want_logits;
  const int64_t num_tokens = g.batch * g.grid_h * g.grid_w, per_image = g.grid_h * g.grid_w;
  at::Tensor dx = want_x ? at::zeros(x.sizes(), x.options().dtype(acc)) : at::Tensor();
  at::Tensor fine_grad, patch_grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "subkernel_tokenize_cuda_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    if (uses_fine_kernel(g)) {
      // blend * grad, routed to the argmax of each pooling window.
      const Columns columns = fine_columns(g);
      const PixelGrad<scalar_t, acc_t> pixel_grad{gp, ic.data_ptr<uint8_t>(), static_cast<acc_t>(g.blend), g.dim,
                                                  per_image, columns.windows()};
      if (want_kernel_grads) fine_grad = kernel_grad(xc, columns, pixel_grad, num_tokens, stream);
      if (want_x) input_grad(columns, pixel_grad, k.fine, num_tokens, dx, stream);
    }
    if (uses_patch_kernel(g)) {
      const Columns columns = patch_columns(g);
      const PixelGrad<scalar_t, acc_t> pixel_grad{gp, nullptr, acc_t(1), g.dim, per_image, 1};
      if (want_kernel_grads) patch_grad = kernel_grad(xc, columns, pixel_grad, num_tokens, stream);
      if (want_x) input_grad(columns, pixel_grad, k.patch, num_tokens, dx, stream);
    }
  });
  return subkernel_grads_from_kernels(g, k, grad, x, weight, logits, dx, fine_grad, patch_grad, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(lowres, CUDA, m) {
  m.impl("subkernel_tokenize_with_indices", &subkernel_tokenize_cuda);
  m.impl("_subkernel_tokenize_backward", &subkernel_tokenize_backward_cuda);
}

}  // namespace lowres::cuda
