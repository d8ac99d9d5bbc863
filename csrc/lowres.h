// Shared by the CPU and CUDA kernels: argument checks and the sizes derived from them.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>

namespace lowres {

enum class Pool { Max, Avg };

// The dtype every kernel computes in for inputs like `t`: float64 stays float64; float32, float16
// and bfloat16 accumulate in float32 and are rounded once at the end.
inline at::ScalarType accumulate_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Sizes of one subkernel_tokenize call (docs/ops.md).
struct SubkernelGeometry {
  int64_t batch, channels, height, width;  // x: [B, C, H, W]
  int64_t dim;                             // D: output channels of the patch filter
  int64_t patch;                           // q: kernel size and stride of the frozen patch conv
  int64_t sub;                             // u: sub-kernel size and stride
  int64_t step;                            // offset between neighbouring sub-kernels
  int64_t per_side;                        // n, with T = n * n sub-kernels
  int64_t ratio;                           // r = q / u: pooling window on the fine map
  int64_t grid_h, grid_w;                  // H / q, W / q
  int64_t fine_w;                          // W / u
  Pool pool;
  double blend;
};

// Validates the inputs (same rules and wording as lowres_kernels/_validation.py).
SubkernelGeometry check_subkernel_tokenize(const at::Tensor& x, const at::Tensor& weight,
                                           const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                                           int64_t sub, int64_t step, std::string_view pool, double blend);

// Validates the inputs of the backward of subkernel_tokenize: the forward's, plus grad (x's dtype,
// the tokens' shape) and, for max pooling, the saved window indices, all on x's device.
SubkernelGeometry check_subkernel_tokenize_backward(const at::Tensor& grad, const at::Tensor& x,
                                                    const at::Tensor& weight, const at::Tensor& logits,
                                                    const at::Tensor& indices, int64_t sub, int64_t step,
                                                    std::string_view pool, double blend);

// Validates the inputs of domain_attention and returns the grid size h.
int64_t check_domain_attention(const at::Tensor& v, const at::Tensor& maps, const at::Tensor& mix_logits,
                               int64_t num_prefix_tokens);

// Validates the inputs of the backward of domain_attention (the forward's, plus grad with v's
// dtype, device and shape) and returns h.
int64_t check_domain_attention_backward(const at::Tensor& grad, const at::Tensor& v, const at::Tensor& maps,
                                        const at::Tensor& mix_logits, int64_t num_prefix_tokens);

// The filters one subkernel_tokenize call multiplies the image with, in the accumulation dtype
// and on the weight's device (csrc/subkernel_filters.cpp):
struct SubkernelFilters {
  at::Tensor alpha;      // softmax(logits) [T]
  at::Tensor placement;  // E [q, u, n]: E[y, i, a] = 1 where y = a * step + i
  at::Tensor mixing;     // M [q q, u u] with K_eff = K @ M
  at::Tensor weight;     // K [D, C, q, q]
  at::Tensor fine;       // K_eff [D, C u u] for max pooling; undefined otherwise (or when blend = 0)
  at::Tensor patch;      // [D, C q q]: (1 - blend) K for max pooling with blend != 1, or for avg pooling
                         // the whole op folded into one q x q filter; undefined when unused
};
// Whether a call multiplies the image with the fine filter K_eff (max pooling) and with a q x q
// kernel (avg pooling, or the blend's plain patch embedding).
inline bool uses_fine_filter(const SubkernelGeometry& g) { return g.pool == Pool::Max && g.blend != 0.0; }
inline bool uses_patch_filter(const SubkernelGeometry& g) { return g.pool == Pool::Avg || g.blend != 1.0; }

// `image_filters = false` leaves fine and patch undefined: a backward that wants no dx needs only
// the gradients of those filters, never the filters themselves.
SubkernelFilters make_subkernel_filters(const SubkernelGeometry& g, const at::Tensor& weight,
                                        const at::Tensor& logits, at::ScalarType acc, bool image_filters = true);

// Maps the gradients of the image GEMMs' filters -- fine_grad [D, C u u] (max pooling) and
// patch_grad [D, C q q], either undefined when that GEMM did not run -- to dL/dweight and
// dL/dlogits in the accumulation dtype (undefined where not wanted).
std::pair<at::Tensor, at::Tensor> subkernel_filter_grads(const SubkernelGeometry& g, const SubkernelFilters& k,
                                                         const at::Tensor& fine_grad, const at::Tensor& patch_grad,
                                                         bool want_weight, bool want_logits);

// The backward of subkernel_tokenize returns (dx, dweight, dlogits, dbias), with a zero-element
// tensor (not_requested) where output_mask does not ask for one. Every device's backward starts and
// ends the same way:
using SubkernelGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// All four gradients when no device kernel needs to run (empty inputs, or only dbias asked for);
// otherwise nullopt.
std::optional<SubkernelGrads> subkernel_grads_without_kernels(const at::Tensor& grad, const at::Tensor& x,
                                                              const at::Tensor& weight, const at::Tensor& logits,
                                                              std::array<bool, 4> output_mask);

// The four gradients from what the device kernels computed in the accumulation dtype: dx (defined
// when asked for) and the image GEMMs' filter gradients (as subkernel_filter_grads takes them),
// cast to the inputs' dtypes.
SubkernelGrads subkernel_grads_from_kernels(const SubkernelGeometry& g, const SubkernelFilters& k,
                                            const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& logits, const at::Tensor& dx,
                                            const at::Tensor& fine_grad, const at::Tensor& patch_grad,
                                            std::array<bool, 4> output_mask);

// A zero-element tensor standing for a gradient the caller did not ask for.
at::Tensor not_requested(const at::Tensor& like);

}  // namespace lowres
