from .domain_attention import domain_attention
from .subkernel_tokenize import subkernel_tokenize

__all__ = ["domain_attention", "subkernel_tokenize"]
