// CPU kernels of subkernel_tokenize (docs/ops.md).
//
// Everything before the pool is linear in x, so the T sub-kernel convolutions are one u x u,
// stride-u convolution with the combined filter K_eff = sum_t softmax(w)_t k_t (built, with its
// gradients, by the device-independent code in csrc/subkernel_filters.cpp). The image is
// processed in tiles of token rows: each tile is an implicit-im2col GEMM (BLAS) whose output
// [D, fine pixels of the tile] is max-pooled straight into the tokens, so the fine map never
// exists in full and no per-sub-kernel tensor ever exists. With pool="avg" the pooled combined
// kernel folds into one q x q filter: the op costs exactly the plain patch embedding.
// Half and bfloat16 inputs are computed in float32 and rounded once at the end.
#include "lowres.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace lowres {
namespace {

// Token rows per tile: at least `min_fine` fine pixels (max pooling) and `min_tokens` tokens per
// tile, so that each tile's GEMMs are efficient -- the weight-gradient GEMMs reduce over the tile,
// and a short reduction spends its time re-reading the accumulator -- but enough tiles to keep
// every thread busy.
int64_t tile_rows(const SubkernelGeometry& g, int64_t min_fine, int64_t min_tokens) {
  const auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / std::max<int64_t>(b, 1); };
  int64_t rows = ceil_div(min_tokens, g.grid_w);
  if (g.pool == Pool::Max) rows = std::max(rows, ceil_div(min_fine, g.ratio * g.fine_w));
  const int64_t balanced = ceil_div(g.batch * g.grid_h, at::get_num_threads());
  return std::clamp<int64_t>(std::min(rows, balanced), 1, g.grid_h);
}

// One tile: token rows [row0, row0 + rows) of image b.
struct Tile {
  int64_t b, row0, rows;
};

Tile tile_at(const SubkernelGeometry& g, int64_t rows_per_tile, int64_t index) {
  const int64_t per_image = (g.grid_h + rows_per_tile - 1) / rows_per_tile;
  const int64_t b = index / per_image, row0 = (index % per_image) * rows_per_tile;
  return {b, row0, std::min(rows_per_tile, g.grid_h - row0)};
}

// Fine (u x u, stride u) patches of the tile as columns: cols[(c, i, j), fine pixel].
template <typename T>
void im2col_fine(const SubkernelGeometry& g, const T* x, const Tile& t, T* cols) {
  const int64_t u = g.sub, fw = g.fine_w, fine_rows = t.rows * g.ratio, ncol = fine_rows * fw;
  for (int64_t c = 0; c < g.channels; ++c) {
    const T* xc = x + ((t.b * g.channels + c) * g.height) * g.width;
    for (int64_t i = 0; i < u; ++i) {
      for (int64_t j = 0; j < u; ++j) {
        T* dst = cols + ((c * u + i) * u + j) * ncol;
        for (int64_t fr = 0; fr < fine_rows; ++fr) {
          const T* src = xc + ((t.row0 * g.ratio + fr) * u + i) * g.width + j;
          for (int64_t fx = 0; fx < fw; ++fx) dst[fr * fw + fx] = src[fx * u];
        }
      }
    }
  }
}

// The adjoint of im2col_fine: dx[patch pixels] += cols.
template <typename T>
void col2im_fine(const SubkernelGeometry& g, const T* cols, const Tile& t, T* dx) {
  const int64_t u = g.sub, fw = g.fine_w, fine_rows = t.rows * g.ratio, ncol = fine_rows * fw;
  for (int64_t c = 0; c < g.channels; ++c) {
    T* dxc = dx + ((t.b * g.channels + c) * g.height) * g.width;
    for (int64_t i = 0; i < u; ++i) {
      for (int64_t j = 0; j < u; ++j) {
        const T* src = cols + ((c * u + i) * u + j) * ncol;
        for (int64_t fr = 0; fr < fine_rows; ++fr) {
          T* dst = dxc + ((t.row0 * g.ratio + fr) * u + i) * g.width + j;
          for (int64_t fx = 0; fx < fw; ++fx) dst[fx * u] += src[fr * fw + fx];
        }
      }
    }
  }
}

// Whole (q x q, stride q) patches of the tile as columns: cols[(c, i, j), token].
template <typename T>
void im2col_patch(const SubkernelGeometry& g, const T* x, const Tile& t, T* cols) {
  const int64_t q = g.patch, gw = g.grid_w, ncol = t.rows * gw;
  for (int64_t c = 0; c < g.channels; ++c) {
    const T* xc = x + ((t.b * g.channels + c) * g.height) * g.width;
    for (int64_t i = 0; i < q; ++i) {
      for (int64_t j = 0; j < q; ++j) {
        T* dst = cols + ((c * q + i) * q + j) * ncol;
        for (int64_t r = 0; r < t.rows; ++r) {
          const T* src = xc + ((t.row0 + r) * q + i) * g.width + j;
          for (int64_t J = 0; J < gw; ++J) dst[r * gw + J] = src[J * q];
        }
      }
    }
  }
}

template <typename T>
void col2im_patch(const SubkernelGeometry& g, const T* cols, const Tile& t, T* dx) {
  const int64_t q = g.patch, gw = g.grid_w, ncol = t.rows * gw;
  for (int64_t c = 0; c < g.channels; ++c) {
    T* dxc = dx + ((t.b * g.channels + c) * g.height) * g.width;
    for (int64_t i = 0; i < q; ++i) {
      for (int64_t j = 0; j < q; ++j) {
        const T* src = cols + ((c * q + i) * q + j) * ncol;
        for (int64_t r = 0; r < t.rows; ++r) {
          T* dst = dxc + ((t.row0 + r) * q + i) * g.width + j;
          for (int64_t J = 0; J < gw; ++J) dst[J * q] += src[r * gw + J];
        }
      }
    }
  }
}

// A [rows, cols] matrix view of the front of a flat scratch buffer.
at::Tensor scratch(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

// Max over each r x r window of r fine rows (row stride fw) for one token row: the value and the
// window index of the first maximum. Branch-free so it vectorises; a NaN wins and then stays, as
// in max_pool2d.
template <typename T, int64_t R>
void max_pool_row_fixed(int64_t r_runtime, const T* fine, int64_t fw, int64_t gw, T* best_out, uint8_t* arg_out) {
  const int64_t r = R > 0 ? R : r_runtime;
  for (int64_t J = 0; J < gw; ++J) {
    const T* window = fine + J * r;
    T best = window[0];
    uint8_t arg = 0;
    for (int64_t di = 0; di < r; ++di) {
      for (int64_t dj = 0; dj < r; ++dj) {
        const T candidate = window[di * fw + dj];
        const bool take = candidate > best || (candidate != candidate && best == best);
        best = take ? candidate : best;
        arg = take ? static_cast<uint8_t>(di * r + dj) : arg;
      }
    }
    best_out[J] = best;
    arg_out[J] = arg;
  }
}

template <typename T>
void max_pool_row(int64_t r, const T* fine, int64_t fw, int64_t gw, T* best_out, uint8_t* arg_out) {
  switch (r) {  // the common windows get fully unrolled loops
    case 1: return max_pool_row_fixed<T, 1>(r, fine, fw, gw, best_out, arg_out);
    case 2: return max_pool_row_fixed<T, 2>(r, fine, fw, gw, best_out, arg_out);
    case 4: return max_pool_row_fixed<T, 4>(r, fine, fw, gw, best_out, arg_out);
    default: return max_pool_row_fixed<T, 0>(r, fine, fw, gw, best_out, arg_out);
  }
}

template <typename T>
void forward_tiles(const SubkernelGeometry& g, const SubkernelFilters& k, const at::Tensor& x, const at::Tensor& bias,
                   at::Tensor& out, at::Tensor& indices) {
  const int64_t rows_per_tile = tile_rows(g, /*min_fine=*/512, /*min_tokens=*/64);
  const int64_t tiles = g.batch * ((g.grid_h + rows_per_tile - 1) / rows_per_tile);
  const int64_t fine_k = g.channels * g.sub * g.sub, patch_k = g.channels * g.patch * g.patch;
  const int64_t max_fine_cols = rows_per_tile * g.ratio * g.fine_w, max_tokens = rows_per_tile * g.grid_w;
  const int64_t r = g.ratio, gw = g.grid_w, fw = g.fine_w, D = g.dim;
  const T* xp = x.data_ptr<T>();
  const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();
  uint8_t* ip = k.fine.defined() ? indices.data_ptr<uint8_t>() : nullptr;
  const auto opts = x.options();

  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    at::Tensor cols, fine, pcols, pout;
    if (k.fine.defined()) {
      cols = at::empty({fine_k * max_fine_cols}, opts);
      fine = at::empty({D * max_fine_cols}, opts);
    }
    if (k.patch.defined()) {
      pcols = at::empty({patch_k * max_tokens}, opts);
      pout = at::empty({D * max_tokens}, opts);
    }
    for (int64_t index = begin; index < end; ++index) {
      const Tile t = tile_at(g, rows_per_tile, index);
      const int64_t fine_cols = t.rows * r * fw, tokens = t.rows * gw;
      if (k.fine.defined()) {
        im2col_fine<T>(g, xp, t, cols.data_ptr<T>());
        at::Tensor fine_view = scratch(fine, D, fine_cols);
        at::mm_out(fine_view, k.fine, scratch(cols, fine_k, fine_cols));
      }
      if (k.patch.defined()) {
        im2col_patch<T>(g, xp, t, pcols.data_ptr<T>());
        at::Tensor pout_view = scratch(pout, D, tokens);
        at::mm_out(pout_view, k.patch, scratch(pcols, patch_k, tokens));
      }
      const T* fp = k.fine.defined() ? fine.data_ptr<T>() : nullptr;
      const T* pp = k.patch.defined() ? pout.data_ptr<T>() : nullptr;
      const T blend = static_cast<T>(g.blend);
      for (int64_t d = 0; d < D; ++d) {
        const T bias_d = bp != nullptr ? bp[d] : T(0);
        const int64_t out_base = ((t.b * D + d) * g.grid_h + t.row0) * gw;
        for (int64_t I = 0; I < t.rows; ++I) {
          T* orow = op + out_base + I * gw;
          const T* prow = pp != nullptr ? pp + d * tokens + I * gw : nullptr;
          if (fp != nullptr) {
            max_pool_row<T>(r, fp + d * fine_cols + I * r * fw, fw, gw, orow, ip + out_base + I * gw);
            for (int64_t J = 0; J < gw; ++J) orow[J] = bias_d + blend * orow[J] + (prow != nullptr ? prow[J] : T(0));
          } else {
            for (int64_t J = 0; J < gw; ++J) orow[J] = bias_d + prow[J];
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> subkernel_tokenize_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                          const at::Tensor& logits,
                                                          const std::optional<at::Tensor>& bias, int64_t sub,
                                                          int64_t step, c10::string_view pool, double blend) {
  const SubkernelGeometry g = check_subkernel_tokenize(x, weight, logits, bias, sub, step, pool, blend);
  TORCH_CHECK(x.device().is_cpu(), "subkernel_tokenize: the CPU kernel got x on ", x.device());
  const bool max_pool = g.pool == Pool::Max;
  at::Tensor out = at::empty({g.batch, g.dim, g.grid_h, g.grid_w}, x.options());
  at::Tensor indices = at::zeros(max_pool ? at::IntArrayRef{g.batch, g.dim, g.grid_h, g.grid_w} : at::IntArrayRef{0},
                                 x.options().dtype(at::kByte));
  if (out.numel() == 0) return {out, indices};

  const auto acc = accumulate_type(x);
  const SubkernelFilters k = make_subkernel_filters(g, weight, logits, acc);
  const at::Tensor xa = x.to(acc).contiguous();
  const at::Tensor ba = bias.has_value() && bias->defined() ? bias->to(acc).contiguous() : at::Tensor();
  at::Tensor out_acc = x.scalar_type() == acc ? out : at::empty(out.sizes(), out.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "subkernel_tokenize_cpu", [&] {
    forward_tiles<scalar_t>(g, k, xa, ba, out_acc, indices);
  });
  if (!out_acc.is_same(out)) out.copy_(out_acc);
  return {out, indices};
}

// dL/d(q x q filter) [D, C q q] = grad [D, B G] @ patches [B G, C q q] as ONE GEMM over every
// token of the batch: BLAS runs the long reduction at full speed, where per-tile accumulation into
// the [D, C q q] output spends its time re-reading that output. The two operands are copies the
// size of the image and of the tokens.
at::Tensor patch_filter_grad(const SubkernelGeometry& g, const at::Tensor& x, const at::Tensor& grad) {
  const int64_t q = g.patch, tokens = g.batch * g.grid_h * g.grid_w;
  const at::Tensor patches = x.view({g.batch, g.channels, g.grid_h, q, g.grid_w, q})
                                 .permute({0, 2, 4, 1, 3, 5})
                                 .reshape({tokens, g.channels * q * q});
  const at::Tensor grad_rows = grad.view({g.batch, g.dim, g.grid_h * g.grid_w}).transpose(0, 1).reshape({g.dim, tokens});
  return at::mm(grad_rows, patches);
}

// Accumulates over all tiles fine_grad [D, C u u] = sum dfine cols_fine^T (max pooling; the
// routed gradient exists only per tile), and writes dx. Each thread sums into its own slice of
// fine_grad; the slices are added at the end.
template <typename T>
void backward_tiles(const SubkernelGeometry& g, const SubkernelFilters& k, const at::Tensor& x, const at::Tensor& grad,
                    const at::Tensor& indices, bool want_filter_grads, at::Tensor& dx, at::Tensor& fine_grad) {
  const int64_t rows_per_tile = tile_rows(g, /*min_fine=*/1024, /*min_tokens=*/256);
  const int64_t tiles = g.batch * ((g.grid_h + rows_per_tile - 1) / rows_per_tile);
  const int64_t fine_k = g.channels * g.sub * g.sub, patch_k = g.channels * g.patch * g.patch;
  const int64_t max_fine_cols = rows_per_tile * g.ratio * g.fine_w, max_tokens = rows_per_tile * g.grid_w;
  const int64_t r = g.ratio, gw = g.grid_w, fw = g.fine_w, D = g.dim;
  const T* xp = x.data_ptr<T>();
  const T* gp = grad.data_ptr<T>();
  T* dxp = dx.defined() ? dx.data_ptr<T>() : nullptr;
  const bool fine_path = uses_fine_filter(g), patch_path = uses_patch_filter(g);
  const uint8_t* ip = fine_path ? indices.data_ptr<uint8_t>() : nullptr;
  const auto opts = x.options();
  const T blend = static_cast<T>(g.blend);

  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    const int64_t thread = at::get_thread_num();
    at::Tensor cols, dfine, pcols, gtile;
    if (fine_path) {
      cols = at::empty({fine_k * max_fine_cols}, opts);
      dfine = at::empty({D * max_fine_cols}, opts);
    }
    if (patch_path && dxp != nullptr) {
      pcols = at::empty({patch_k * max_tokens}, opts);
      gtile = at::empty({D * max_tokens}, opts);
    }
    for (int64_t index = begin; index < end; ++index) {
      const Tile t = tile_at(g, rows_per_tile, index);
      const int64_t fine_cols = t.rows * r * fw, tokens = t.rows * gw;
      if (fine_path) {
        // Route blend * g to the argmax of each pooling window.
        at::Tensor dfine_view = scratch(dfine, D, fine_cols);
        dfine_view.zero_();
        T* df = dfine.data_ptr<T>();
        for (int64_t d = 0; d < D; ++d) {
          const int64_t base = ((t.b * D + d) * g.grid_h + t.row0) * gw;
          for (int64_t I = 0; I < t.rows; ++I) {
            for (int64_t J = 0; J < gw; ++J) {
              const int64_t arg = ip[base + I * gw + J];
              df[d * fine_cols + (I * r + arg / r) * fw + J * r + arg % r] = blend * gp[base + I * gw + J];
            }
          }
        }
        if (want_filter_grads) {
          im2col_fine<T>(g, xp, t, cols.data_ptr<T>());
          fine_grad[thread].addmm_(dfine_view, scratch(cols, fine_k, fine_cols).t());
        }
        if (dxp != nullptr) {
          at::Tensor dcols = scratch(cols, fine_k, fine_cols);
          at::mm_out(dcols, k.fine.t(), dfine_view);
          col2im_fine<T>(g, cols.data_ptr<T>(), t, dxp);
        }
      }
      if (patch_path && dxp != nullptr) {
        at::Tensor g_view = scratch(gtile, D, tokens);
        T* gt = gtile.data_ptr<T>();
        for (int64_t d = 0; d < D; ++d) {
          const T* src = gp + ((t.b * D + d) * g.grid_h + t.row0) * gw;
          std::copy(src, src + tokens, gt + d * tokens);
        }
        at::Tensor dcols = scratch(pcols, patch_k, tokens);
        at::mm_out(dcols, k.patch.t(), g_view);
        col2im_patch<T>(g, pcols.data_ptr<T>(), t, dxp);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> subkernel_tokenize_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& logits,
    const at::Tensor& indices, int64_t sub, int64_t step, c10::string_view pool, double blend,
    std::array<bool, 4> output_mask) {
  const SubkernelGeometry g = check_subkernel_tokenize_backward(grad, x, weight, logits, indices, sub, step, pool, blend);
  TORCH_CHECK(x.device().is_cpu(), "subkernel_tokenize backward: the CPU kernel got x on ", x.device());
  if (auto trivial = subkernel_grads_without_kernels(grad, x, weight, logits, output_mask)) return *trivial;
  const bool want_x = output_mask[0], want_weight = output_mask[1], want_logits = output_mask[2];

  const auto acc = accumulate_type(x);
  const SubkernelFilters k = make_subkernel_filters(g, weight, logits, acc, /*image_filters=*/want_x);
  const at::Tensor xa = x.to(acc).contiguous();
  const at::Tensor ga = grad.to(acc).contiguous();
  const at::Tensor ia = indices.contiguous();
  const bool want_filter_grads = want_weight || want_logits;
  const int64_t threads = at::get_num_threads();
  at::Tensor dx = want_x ? at::zeros(xa.sizes(), xa.options()) : at::Tensor();
  at::Tensor fine_grad, patch_grad;
  const int64_t fine_k = g.channels * g.sub * g.sub;
  if (want_filter_grads && uses_fine_filter(g)) fine_grad = at::zeros({threads, g.dim, fine_k}, xa.options());
  if (want_filter_grads && uses_patch_filter(g)) patch_grad = patch_filter_grad(g, xa, ga);
  AT_DISPATCH_FLOATING_TYPES(acc, "subkernel_tokenize_cpu_backward", [&] {
    backward_tiles<scalar_t>(g, k, xa, ga, ia, want_filter_grads, dx, fine_grad);
  });
  // fine_grad holds one partial sum per thread.
  return subkernel_grads_from_kernels(g, k, grad, x, weight, logits, dx,
                                      fine_grad.defined() ? fine_grad.sum(0) : fine_grad, patch_grad, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(lowres, CPU, m) {
  m.impl("subkernel_tokenize_with_indices", &subkernel_tokenize_cpu);
  m.impl("_subkernel_tokenize_backward", &subkernel_tokenize_backward_cpu);
}

}  // namespace lowres
