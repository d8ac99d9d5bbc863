// CUDA kernels of subkernel_tokenize (docs/ops.md), mirroring csrc/cpu/subkernel_tokenize.cpp.
//
// Everything before the pool is linear in x, so the T sub-kernel convolutions are one u x u,
// stride-u convolution with the combined filter K_eff = sum_t softmax(w)_t k_t, built once per
// call on the device by the shared filter algebra (csrc/subkernel_filters.cpp). The convolutions
// run as tiled shared-memory GEMMs that read the image straight from global memory (implicit
// im2col: no column buffer exists), with the address of every token, pixel and kernel entry
// worked out (its divisions done) once per block or stage, not per staged element, and the next
// stage fetched into registers while the current one is multiplied:
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
// owning the kMicro x kMicro micro-tile at rows ty kMicro + i and columns tx kMicro + j (so that
// its operands are one vector read from shared memory each), the reduction staged through
// shared memory kDepth at a time.

constexpr int kTile = 64;
constexpr int kDepth = 16;
constexpr int kSide = 16;
constexpr int kThreads = kSide * kSide;
constexpr int kMicro = kTile / kSide;
// Padding of the staged rows: it shifts consecutive k across shared-memory banks for the k-major
// stores, and stays a multiple of kMicro so that the micro-tile reads remain aligned vectors.
constexpr int kPad = 4;
constexpr int kMinBlocksPerSM = 2;  // caps registers at 128 per thread: two blocks share an SM

static_assert(kPad % kMicro == 0, "the micro-tile vector reads need aligned rows");
static_assert(kDepth * kTile % kThreads == 0, "each thread stages the same number of operand elements");
static_assert(kThreads >= 2 * kTile && kThreads >= kDepth, "the per-block and per-stage tables take one thread per entry");

template <typename T>
struct alignas(kMicro * sizeof(T)) MicroVector {
  T v[kMicro];
};

// `reduction` holds the reduction indices of the stage being fetched and of the one after (see
// block_gemm) as the operands need them: the address arithmetic of an index is done once per
// stage, not once per staged element.
template <typename acc_t, typename ReductionIndex>
struct GemmStage {
  alignas(kMicro * sizeof(acc_t)) acc_t a[kDepth][kTile + kPad];  // A[row, k] stored k-major
  alignas(kMicro * sizeof(acc_t)) acc_t b[kDepth][kTile + kPad];  // B[k, col]
  ReductionIndex reduction[2][kDepth];
};

// acc[i][j] += sum over k in [k_begin, k_end) of A(ty kMicro + i, k) B(k, tx kMicro + j), the rows
// and columns local to the block's tile. `ops` provides
//   ReductionIndex reduction(k)        what A and B need to know of reduction index k (offsets, ...),
//   acc_t a(row, info), b(info, col)   the operands, 0 for rows and columns outside the matrix,
//   kAAlongK, kBAlongK                 whether consecutive threads fetch consecutive k (for an
//                                      operand contiguous in k) or consecutive rows / columns.
// The reduction bound is handled here. The next stage's operands are fetched into registers while
// the current one is multiplied, so their latency hides behind the arithmetic. Every thread of the
// block must call it.
template <typename acc_t, typename Operands>
__device__ void block_gemm(const Operands& ops, int64_t k_begin, int64_t k_end,
                           GemmStage<acc_t, typename Operands::ReductionIndex>& stage, acc_t (&acc)[kMicro][kMicro]) {
  using ReductionIndex = typename Operands::ReductionIndex;
  constexpr int kPerThread = kDepth * kTile / kThreads;
  // Element e of a stage as (k, row-or-column) within the stage.
  const auto split = [](int e, bool along_k, int& kk, int& rc) {
    kk = along_k ? e % kDepth : e / kTile;
    rc = along_k ? e / kDepth : e % kTile;
  };
  acc_t next_a[kPerThread], next_b[kPerThread];
  const auto fetch = [&](int64_t k0, const ReductionIndex* info) {
#pragma unroll
    for (int s = 0; s < kPerThread; ++s) {
      int kk, rc;
      split(threadIdx.x + s * kThreads, Operands::kAAlongK, kk, rc);
      next_a[s] = k0 + kk < k_end ? ops.a(rc, info[kk]) : acc_t(0);
      split(threadIdx.x + s * kThreads, Operands::kBAlongK, kk, rc);
      next_b[s] = k0 + kk < k_end ? ops.b(info[kk], rc) : acc_t(0);
    }
  };
  const auto tabulate_reduction = [&](int64_t k0, int buffer) {
    if (threadIdx.x < kDepth && k0 + threadIdx.x < k_end) stage.reduction[buffer][threadIdx.x] = ops.reduction(k0 + threadIdx.x);
  };

  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
  tabulate_reduction(k_begin, 0);
  tabulate_reduction(k_begin + kDepth, 1);
  __syncthreads();
  fetch(k_begin, stage.reduction[0]);
  int buffer = 0;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kDepth, buffer ^= 1) {
#pragma unroll
    for (int s = 0; s < kPerThread; ++s) {
      int kk, rc;
      split(threadIdx.x + s * kThreads, Operands::kAAlongK, kk, rc);
      stage.a[kk][rc] = next_a[s];
      split(threadIdx.x + s * kThreads, Operands::kBAlongK, kk, rc);
      stage.b[kk][rc] = next_b[s];
    }
    __syncthreads();
    if (k0 + kDepth < k_end) {
      fetch(k0 + kDepth, stage.reduction[buffer ^ 1]);
      // Every thread fetched this stage (reading `buffer`) before the barrier above.
      tabulate_reduction(k0 + 2 * kDepth, buffer);
    }
#pragma unroll
    for (int kk = 0; kk < kDepth; ++kk) {
      const auto a = *reinterpret_cast<const MicroVector<acc_t>*>(&stage.a[kk][ty * kMicro]);
      const auto b = *reinterpret_cast<const MicroVector<acc_t>*>(&stage.b[kk][tx * kMicro]);
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
#pragma unroll
        for (int j = 0; j < kMicro; ++j) acc[i][j] += a.v[i] * b.v[j];
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

// Calls visit(i, j, row, col) for each element acc[i][j] of the thread's micro-tile, with its
// row and column local to the block's tile.
template <typename Visit>
__device__ __forceinline__ void for_each_in_micro_tile(const Visit& visit) {
  const int tx = threadIdx.x % kSide, ty = threadIdx.x / kSide;
#pragma unroll
  for (int i = 0; i < kMicro; ++i) {
#pragma unroll
    for (int j = 0; j < kMicro; ++j) visit(i, j, ty * kMicro + i, tx * kMicro + j);
  }
}

// ---------------------------------------------------------------------------------------------
// The image as the columns of a convolution with kernel = stride = `size`, for the window x
// window pixels under each token: element (token, w, k), with token = (b, I, J), w = di r + dj
// and k = (c, i, j), is x[b, c, (I r + di) size + i, (J r + dj) size + j], at offset
// token_offset(token) + window_offset(w) + entry_offset(k).
// Fine pixels: size = u, window = q / u. Whole patches: size = q, window = 1.
struct Columns {
  int64_t channels, height, width, grid_h, grid_w, size, window;

  __host__ __device__ int64_t depth() const { return channels * size * size; }
  __host__ __device__ int64_t windows() const { return window * window; }
  __host__ __device__ int64_t per_image() const { return grid_h * grid_w; }

  __device__ int64_t token_offset(int64_t token) const {
    const int64_t b = token / per_image(), rest = token % per_image();
    return (b * channels * height + (rest / grid_w) * window * size) * width + (rest % grid_w) * window * size;
  }
  __device__ int64_t window_offset(int64_t w) const { return (w / window) * size * width + (w % window) * size; }
  __device__ int64_t entry_offset(int64_t k) const {
    const int64_t c = k / (size * size), i = (k / size) % size, j = k % size;
    return (c * height + i) * width + j;
  }
  // The index of tokens[b, 0, I, J] in a [B, dim, grid_h, grid_w] tensor; channel d adds d per_image().
  __device__ int64_t token_index(int64_t token, int64_t dim) const {
    return (token / per_image()) * dim * per_image() + token % per_image();
  }
};

Columns fine_columns(const SubkernelGeometry& g) {
  return {g.channels, g.height, g.width, g.grid_h, g.grid_w, g.sub, g.ratio};
}

Columns patch_columns(const SubkernelGeometry& g) {
  return {g.channels, g.height, g.width, g.grid_h, g.grid_w, g.patch, 1};
}

// One pixel of the columns, p = w num_tokens + token (window-major, so that consecutive pixels
// are consecutive tokens): where its gradient and its image patch lie.
struct Pixel {
  int64_t grad_index;    // Columns::token_index of its token; -1 for a pixel past the last one
  int64_t image_offset;  // token_offset + window_offset
  int window;
};

// The gradient reaching pixel p of channel d: scale * grad[b, d, I, J], routed (for max pooling,
// when `indices` is given) only to the window's argmax.
template <typename scalar_t, typename acc_t>
struct PixelGrad {
  const scalar_t* grad;    // [B, D, H/q, W/q]
  const uint8_t* indices;  // same shape, or null
  acc_t scale;
  Columns columns;
  int64_t dim, num_tokens;

  __device__ Pixel pixel(int64_t p) const {
    const int64_t w = p / num_tokens, token = p % num_tokens;
    return {columns.token_index(token, dim), columns.token_offset(token) + columns.window_offset(w), static_cast<int>(w)};
  }

  __device__ __forceinline__ acc_t operator()(const Pixel& pixel, int64_t d) const {
    const int64_t index = pixel.grad_index + d * columns.per_image();
    if (indices != nullptr && indices[index] != pixel.window) return acc_t(0);
    return scale * static_cast<acc_t>(grad[index]);
  }
};

// A kernel entry as a reduction index: the entry and its offset within a pixel's patch.
struct Entry {
  int64_t k, offset;
};

// ---------------------------------------------------------------------------------------------
// Kernels.

// Forward GEMM operands: A = kernel [dim, depth] (rows = channels), B = the columns of window
// position `window_offset` (columns = tokens, located by `token_offsets`, -1 past the last).
template <typename scalar_t, typename acc_t>
struct FilterTimesColumns {
  using ReductionIndex = Entry;
  static constexpr bool kAAlongK = true, kBAlongK = true;  // kernel rows and patch rows are contiguous in k
  const acc_t* filter;
  const scalar_t* x;
  Columns columns;
  int64_t dim, row0, window_offset;
  const int64_t* token_offsets;

  __device__ Entry reduction(int64_t k) const { return {k, columns.entry_offset(k)}; }
  __device__ acc_t a(int r, const Entry& e) const {
    return row0 + r < dim ? filter[(row0 + r) * columns.depth() + e.k] : acc_t(0);
  }
  __device__ acc_t b(const Entry& e, int c) const {
    return token_offsets[c] >= 0 ? static_cast<acc_t>(x[token_offsets[c] + window_offset + e.offset]) : acc_t(0);
  }
};

// tokens[b, d, I, J] = bias[d] + blend max_w (K_fine cols_fine(token, w))[d] + (K_patch cols_patch(token))[d],
// with the argmax w written to `indices`. Either kernel may be absent (null). One block per
// kTile channels (rows) x kTile tokens (columns).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    tokenize_forward_kernel(const scalar_t* __restrict__ x, Columns fine, Columns patch,
                            const acc_t* __restrict__ fine_filter, const acc_t* __restrict__ patch_filter,
                            const scalar_t* __restrict__ bias, acc_t blend, int64_t dim, int64_t num_tokens,
                            scalar_t* __restrict__ out, uint8_t* __restrict__ indices) {
  __shared__ GemmStage<acc_t, Entry> stage;
  __shared__ int64_t token_offsets[kTile], token_indices[kTile];  // per column; -1 past the last token
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  if (threadIdx.x < kTile) {
    const int64_t token = col0 + threadIdx.x;
    // A token's top-left pixel is the same for the fine and the patch columns.
    token_offsets[threadIdx.x] = token < num_tokens ? fine.token_offset(token) : -1;
    token_indices[threadIdx.x] = token < num_tokens ? fine.token_index(token, dim) : -1;
  }
  __syncthreads();
  acc_t acc[kMicro][kMicro], best[kMicro][kMicro];
  uint32_t arg[kMicro] = {};  // the argmax window of best[i][j] in byte j of arg[i] (one register per row)
  static_assert(kMicro <= 4, "arg packs a row of window indices into 32 bits");

  if (fine_filter != nullptr) {
    for (int64_t w = 0; w < fine.windows(); ++w) {
      const FilterTimesColumns<scalar_t, acc_t> ops{fine_filter, x, fine, dim, row0, fine.window_offset(w), token_offsets};
      zero(acc);
      block_gemm(ops, 0, fine.depth(), stage, acc);
      for_each_in_micro_tile([&](int i, int j, int, int) {
        // The first NaN wins and stays, as in max_pool2d and the CPU kernel.
        const acc_t candidate = acc[i][j];
        if (w == 0 || ((candidate > best[i][j] || candidate != candidate) && best[i][j] == best[i][j])) {
          best[i][j] = candidate;
          arg[i] = (arg[i] & ~(0xffu << (8 * j))) | (static_cast<uint32_t>(w) << (8 * j));
        }
      });
    }
  }
  if (patch_filter != nullptr) {
    const FilterTimesColumns<scalar_t, acc_t> ops{patch_filter, x, patch, dim, row0, 0, token_offsets};
    zero(acc);
    block_gemm(ops, 0, patch.depth(), stage, acc);
  }

  const int64_t per_image = fine.per_image();
  for_each_in_micro_tile([&](int i, int j, int r, int c) {
    const int64_t d = row0 + r;
    if (d >= dim || token_indices[c] < 0) return;
    const int64_t index = token_indices[c] + d * per_image;
    acc_t value = bias != nullptr ? static_cast<acc_t>(bias[d]) : acc_t(0);
    if (fine_filter != nullptr) {
      value += blend * best[i][j];
      indices[index] = static_cast<uint8_t>(arg[i] >> (8 * j));
    }
    if (patch_filter != nullptr) value += acc[i][j];
    out[index] = static_cast<scalar_t>(value);
  });
}

// Kernel-gradient GEMM operands: A = the pixel gradient [dim, pixels] (rows = channels, the
// reduction over pixels), B = the columns [pixels, depth] (columns = kernel entries, located by
// `entry_offsets`, -1 past the last).
template <typename scalar_t, typename acc_t>
struct GradTimesColumns {
  using ReductionIndex = Pixel;
  static constexpr bool kAAlongK = true, kBAlongK = false;  // consecutive pixels / kernel entries lie together
  PixelGrad<scalar_t, acc_t> pixel_grad;
  const scalar_t* x;
  int64_t row0;
  const int64_t* entry_offsets;

  __device__ Pixel reduction(int64_t p) const { return pixel_grad.pixel(p); }
  __device__ acc_t a(int r, const Pixel& p) const { return row0 + r < pixel_grad.dim ? pixel_grad(p, row0 + r) : acc_t(0); }
  __device__ acc_t b(const Pixel& p, int c) const {
    return entry_offsets[c] >= 0 ? static_cast<acc_t>(x[p.image_offset + entry_offsets[c]]) : acc_t(0);
  }
};

// partial[z, d, k] = sum over the pixels p of split z of G(p, d) cols(p, k): the gradient of the
// kernel that multiplies `cols`. One block per kTile channels (rows) x kTile kernel entries
// (columns) x one split of the pixels; the splits are added up by the caller.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    filter_grad_kernel(const scalar_t* __restrict__ x, PixelGrad<scalar_t, acc_t> pixel_grad, int64_t num_pixels,
                       int64_t chunk, acc_t* __restrict__ partial) {
  __shared__ GemmStage<acc_t, Pixel> stage;
  __shared__ int64_t entry_offsets[kTile];
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t begin = static_cast<int64_t>(blockIdx.z) * chunk, end = std::min(num_pixels, begin + chunk);
  const int64_t dim = pixel_grad.dim, depth = pixel_grad.columns.depth();
  if (threadIdx.x < kTile) {
    const int64_t k = col0 + threadIdx.x;
    entry_offsets[threadIdx.x] = k < depth ? pixel_grad.columns.entry_offset(k) : -1;
  }
  __syncthreads();
  acc_t acc[kMicro][kMicro];
  zero(acc);
  block_gemm(GradTimesColumns<scalar_t, acc_t>{pixel_grad, x, row0, entry_offsets}, begin, end, stage, acc);

  acc_t* out = partial + static_cast<int64_t>(blockIdx.z) * dim * depth;
  for_each_in_micro_tile([&](int i, int j, int r, int c) {
    const int64_t d = row0 + r, k = col0 + c;
    if (d < dim && k < depth) out[d * depth + k] = acc[i][j];
  });
}

// Input-gradient GEMM operands: A = the pixel gradient [pixels, dim] (rows = the pixels of
// `pixels`, grad_index -1 past the last; the reduction over channels), B = kernel [dim, depth].
template <typename scalar_t, typename acc_t>
struct GradTimesFilter {
  using ReductionIndex = int64_t;
  static constexpr bool kAAlongK = false, kBAlongK = false;  // consecutive pixels / kernel entries lie together
  PixelGrad<scalar_t, acc_t> pixel_grad;
  const acc_t* filter;
  int64_t col0;
  const Pixel* pixels;

  __device__ int64_t reduction(int64_t d) const { return d; }
  __device__ acc_t a(int r, int64_t d) const {
    return pixels[r].grad_index >= 0 ? pixel_grad(pixels[r], d) : acc_t(0);
  }
  __device__ acc_t b(int64_t d, int c) const {
    const int64_t depth = pixel_grad.columns.depth();
    return col0 + c < depth ? filter[d * depth + col0 + c] : acc_t(0);
  }
};

// dx[pixels of cols(p, k)] += sum_d G(p, d) kernel[d, k]. Each (p, k) is a distinct pixel of x
// (the patches do not overlap), so the plain += races with nothing. One block per kTile pixels p
// (rows) x kTile kernel entries (columns).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    input_grad_kernel(PixelGrad<scalar_t, acc_t> pixel_grad, const acc_t* __restrict__ filter, int64_t num_pixels,
                      acc_t* __restrict__ dx) {
  __shared__ GemmStage<acc_t, int64_t> stage;
  __shared__ Pixel pixels[kTile];
  __shared__ int64_t entry_offsets[kTile];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile, col0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const Columns& columns = pixel_grad.columns;
  if (threadIdx.x < kTile) {
    const int64_t p = row0 + threadIdx.x;
    pixels[threadIdx.x] = p < num_pixels ? pixel_grad.pixel(p) : Pixel{-1, 0, 0};
  } else if (threadIdx.x < 2 * kTile) {
    const int64_t k = col0 + threadIdx.x - kTile;
    entry_offsets[threadIdx.x - kTile] = k < columns.depth() ? columns.entry_offset(k) : -1;
  }
  __syncthreads();
  acc_t acc[kMicro][kMicro];
  zero(acc);
  block_gemm(GradTimesFilter<scalar_t, acc_t>{pixel_grad, filter, col0, pixels}, 0, pixel_grad.dim, stage, acc);

  for_each_in_micro_tile([&](int i, int j, int r, int c) {
    if (pixels[r].grad_index >= 0 && entry_offsets[c] >= 0) dx[pixels[r].image_offset + entry_offsets[c]] += acc[i][j];
  });
}

// ---------------------------------------------------------------------------------------------
// Host side.

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
  const SubkernelFilters k = make_subkernel_filters(g, weight, logits, accumulate_type(x));
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

// dL/d(kernel multiplying the columns) [D, depth], summed over every pixel.
template <typename scalar_t, typename acc_t>
at::Tensor filter_grad(const at::Tensor& x, const PixelGrad<scalar_t, acc_t>& pixel_grad, cudaStream_t stream) {
  const int64_t dim = pixel_grad.dim, depth = pixel_grad.columns.depth();
  const int64_t num_pixels = pixel_grad.num_tokens * pixel_grad.columns.windows();
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
  filter_grad_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(x.data_ptr<scalar_t>(), pixel_grad, num_pixels,
                                                                     chunk, partial.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial.sum(0);
}

template <typename scalar_t, typename acc_t>
void input_grad(const PixelGrad<scalar_t, acc_t>& pixel_grad, const at::Tensor& filter, at::Tensor& dx,
                cudaStream_t stream) {
  const int64_t num_pixels = pixel_grad.num_tokens * pixel_grad.columns.windows();
  const dim3 grid = launch_grid("subkernel_tokenize backward", ceil_div(num_pixels, kTile),
                                ceil_div(pixel_grad.columns.depth(), kTile));
  input_grad_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(pixel_grad, filter.data_ptr<acc_t>(), num_pixels,
                                                                    dx.data_ptr<acc_t>());
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
  const SubkernelFilters k = make_subkernel_filters(g, weight, logits, acc, /*image_filters=*/want_x);
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = grad.to(x.scalar_type()).contiguous();
  const at::Tensor ic = uses_fine_filter(g) ? indices.contiguous() : at::Tensor();
  const bool want_filter_grads = want_weight || want_logits;
  const int64_t num_tokens = g.batch * g.grid_h * g.grid_w;
  at::Tensor dx = want_x ? at::zeros(x.sizes(), x.options().dtype(acc)) : at::Tensor();
  at::Tensor fine_grad, patch_grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "subkernel_tokenize_cuda_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    if (uses_fine_filter(g)) {
      // blend * grad, routed to the argmax of each pooling window.
      const PixelGrad<scalar_t, acc_t> pixel_grad{gp, ic.data_ptr<uint8_t>(), static_cast<acc_t>(g.blend),
                                                  fine_columns(g), g.dim, num_tokens};
      if (want_filter_grads) fine_grad = filter_grad(xc, pixel_grad, stream);
      if (want_x) input_grad(pixel_grad, k.fine, dx, stream);
    }
    if (uses_patch_filter(g)) {
      const PixelGrad<scalar_t, acc_t> pixel_grad{gp, nullptr, acc_t(1), patch_columns(g), g.dim, num_tokens};
      if (want_filter_grads) patch_grad = filter_grad(xc, pixel_grad, stream);
      if (want_x) input_grad(pixel_grad, k.patch, dx, stream);
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
