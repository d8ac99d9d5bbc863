// Operator schemas (one TORCH_LIBRARY block) and the argument checks every backend shares.
// Kernels register per device in cpu/ and cuda/; autograd and fake (meta) implementations
// are registered from Python (lowres_kernels/_registration.py, called by lowres_kernels/ops.py).
#include "lowres.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <string>

namespace lowres {
namespace {

// Python's spelling ("torch.float32"), so messages read the same from every backend.
std::string dtype_name(at::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }

bool is_supported_float(at::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_float_like(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                      const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " must be a tensor");
  TORCH_CHECK_VALUE(is_supported_float(t.scalar_type()), op, ": ", name,
                    " must be a floating tensor (float64/32/16, bfloat16), got ", dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", dtype_name(t.scalar_type()), " but ",
                    ref_name, " has ", dtype_name(ref.scalar_type()), "; they must match");
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device(), "; they must be on one device");
}

}  // namespace

SubkernelGeometry check_subkernel_tokenize(const at::Tensor& x, const at::Tensor& weight,
                                           const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                                           int64_t sub, int64_t step, std::string_view pool, double blend) {
  constexpr const char* op = "subkernel_tokenize";
  check_float_like(op, "x", x, "x", x);
  check_float_like(op, "weight", weight, "x", x);
  check_float_like(op, "logits", logits, "x", x);
  if (bias.has_value() && bias->defined()) check_float_like(op, "bias", *bias, "x", x);
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be [B, C, H, W], got shape ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4, op, ": weight must be [D, C, q, q], got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(1) == x.size(1), op, ": weight has ", weight.size(1), " input channels but x has ",
                    x.size(1), " (weight ", weight.sizes(), ", x ", x.sizes(), ")");
  const int64_t q = weight.size(2);
  TORCH_CHECK_VALUE(weight.size(3) == q && q >= 1, op, ": weight must have a square kernel [D, C, q, q], got shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(logits.dim() == 1 && logits.numel() >= 1, op,
                    ": logits must be a vector [T] with T = n*n, got shape ", logits.sizes());
  const int64_t n = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(logits.numel()))));
  TORCH_CHECK_VALUE(n * n == logits.numel(), op, ": logits must have a square number T = n*n of entries, got T = ",
                    logits.numel());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [D] = [",
                      weight.size(0), "], got shape ", bias->sizes());
  }
  TORCH_CHECK_VALUE(sub >= 1, op, ": sub must be a positive int, got ", sub);
  TORCH_CHECK_VALUE(step >= 1, op, ": step must be a positive int, got ", step);
  TORCH_CHECK_VALUE(sub <= q && q % sub == 0, op, ": sub=", sub, " must divide the kernel size q=", q, " (weight ",
                    weight.sizes(), ")");
  TORCH_CHECK_VALUE((n - 1) * step < q, op, ": with T=", n * n, " sub-kernels (", n, " per side) and step=", step,
                    " the last offset ", (n - 1) * step, " falls outside the kernel of size q=", q);
  TORCH_CHECK_VALUE(pool == "max" || pool == "avg", op, ": pool must be one of ('max', 'avg'), got '", pool, "'");
  TORCH_CHECK_VALUE(std::isfinite(blend), op, ": blend must be a finite number, got ", blend);
  const int64_t ratio = q / sub;
  TORCH_CHECK_VALUE(ratio * ratio <= 255, op, ": the pooling window q/sub=", ratio, " is too large (at most 15)");
  TORCH_CHECK_VALUE(x.size(2) % q == 0 && x.size(3) % q == 0, op, ": the image size ", x.size(2), "x", x.size(3),
                    " of x ", x.sizes(), " must be a multiple of q=", q);
  return SubkernelGeometry{x.size(0), x.size(1), x.size(2), x.size(3), weight.size(0), q, sub, step, n, ratio,
                           x.size(2) / q, x.size(3) / q, x.size(3) / sub, pool == "max" ? Pool::Max : Pool::Avg,
                           blend};
}

SubkernelGeometry check_subkernel_tokenize_backward(const at::Tensor& grad, const at::Tensor& x,
                                                    const at::Tensor& weight, const at::Tensor& logits,
                                                    const at::Tensor& indices, int64_t sub, int64_t step,
                                                    std::string_view pool, double blend) {
  constexpr const char* op = "subkernel_tokenize backward";
  const SubkernelGeometry g = check_subkernel_tokenize(x, weight, logits, std::nullopt, sub, step, pool, blend);
  check_float_like(op, "grad", grad, "x", x);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == g.batch && grad.size(1) == g.dim && grad.size(2) == g.grid_h &&
                        grad.size(3) == g.grid_w,
                    op, ": grad must be [", g.batch, ", ", g.dim, ", ", g.grid_h, ", ", g.grid_w, "], got ",
                    grad.sizes());
  if (g.pool == Pool::Max) {
    TORCH_CHECK_VALUE(indices.sizes() == grad.sizes() && indices.scalar_type() == at::kByte, op,
                      ": indices must be uint8 of shape ", grad.sizes(), ", got ", dtype_name(indices.scalar_type()),
                      " ", indices.sizes());
    TORCH_CHECK(indices.device() == x.device(), op, ": indices is on ", indices.device(), " but x is on ",
                x.device(), "; they must be on one device");
  }
  return g;
}

int64_t check_domain_attention(const at::Tensor& v, const at::Tensor& maps, const at::Tensor& mix_logits,
                               int64_t num_prefix_tokens) {
  constexpr const char* op = "domain_attention";
  check_float_like(op, "v", v, "v", v);
  check_float_like(op, "maps", maps, "v", v);
  check_float_like(op, "mix_logits", mix_logits, "v", v);
  TORCH_CHECK_VALUE(v.dim() == 3, op, ": v must be [B, N, Dv], got shape ", v.sizes());
  TORCH_CHECK_VALUE(maps.dim() == 3 && maps.size(1) == maps.size(2) && maps.size(1) % 2 == 0 && maps.size(1) > 0, op,
                    ": maps must be [C, 2h, 2h] (square, even side), got shape ", maps.sizes());
  TORCH_CHECK_VALUE(maps.size(0) >= 1, op, ": maps must hold at least one map, got shape ", maps.sizes());
  TORCH_CHECK_VALUE(mix_logits.dim() == 1 && mix_logits.size(0) == maps.size(0), op, ": mix_logits must be [C] = [",
                    maps.size(0), "] (one per map), got shape ", mix_logits.sizes());
  TORCH_CHECK_VALUE(num_prefix_tokens >= 0, op, ": num_prefix_tokens must be a non-negative int, got ",
                    num_prefix_tokens);
  const int64_t h = maps.size(1) / 2;
  TORCH_CHECK_VALUE(v.size(1) == num_prefix_tokens + h * h, op, ": v has N=", v.size(1), " tokens but maps ",
                    maps.sizes(), " describe a ", h, "x", h, " grid, which with num_prefix_tokens=", num_prefix_tokens,
                    " needs N=", num_prefix_tokens + h * h);
  return h;
}

int64_t check_domain_attention_backward(const at::Tensor& grad, const at::Tensor& v, const at::Tensor& maps,
                                        const at::Tensor& mix_logits, int64_t num_prefix_tokens) {
  constexpr const char* op = "domain_attention backward";
  const int64_t h = check_domain_attention(v, maps, mix_logits, num_prefix_tokens);
  check_float_like(op, "grad", grad, "v", v);
  TORCH_CHECK_VALUE(grad.sizes() == v.sizes(), op, ": grad must be ", v.sizes(), ", got ",
                    grad.sizes());
  return h;
}

at::Tensor not_requested(const at::Tensor& like) { return at::empty({0}, like.options()); }

}  // namespace lowres

TORCH_LIBRARY(lowres, m) {
  // tokens [B, D, H/q, W/q] and, for pool="max", the argmax inside each r x r window (uint8;
  // empty for "avg"), which the backward uses, as max_pool2d_with_indices does.
  m.def(
      "subkernel_tokenize_with_indices(Tensor x, Tensor weight, Tensor logits, Tensor? bias, int sub, int step, "
      "str pool, float blend) -> (Tensor, Tensor)");
  // Gradients for x, weight, logits, bias; a zero-element tensor where output_mask is false.
  m.def(
      "_subkernel_tokenize_backward(Tensor grad, Tensor x, Tensor weight, Tensor logits, Tensor indices, int sub, "
      "int step, str pool, float blend, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("domain_attention(Tensor v, Tensor maps, Tensor mix_logits, int num_prefix_tokens) -> Tensor");
  // Gradients for v, maps, mix_logits; a zero-element tensor where output_mask is false.
  m.def(
      "_domain_attention_backward(Tensor grad, Tensor v, Tensor maps, Tensor mix_logits, int num_prefix_tokens, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
