"""lowres_kernels: fused sub-kernel tokenization and global domain attention as torch ops.

    import lowres_kernels as lk
    tokens = lk.subkernel_tokenize(x, weight, logits, sub=7, step=2, pool="max")
    mixed = lk.domain_attention(v, maps, mix_logits, num_prefix_tokens=1)
"""

from . import _library  # noqa: F401  (loads torch.ops.lowres before anything registers against it)
from . import nn, reference
from ._backend import BACKENDS, available_backends
from .ops import domain_attention, subkernel_tokenize

__version__ = "0.1.0"
__all__ = ["BACKENDS", "available_backends", "domain_attention", "nn", "reference", "subkernel_tokenize"]
