"""Triton backend of the lowres ops (docs/ops.md), selected with backend="triton".

Each op is a `torch.library.custom_op` in the `lowres_triton` namespace, under the compiled ops'
names (lowres_kernels/_registration.py), whose implementation launches the Triton kernels; the
fake implementations and autograd formulas are the compiled ops' (registered through
`_registration`), so `torch.compile(fullgraph=True)` sees through both.
On machines without a GPU the kernels run on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1, which must be set before triton is first imported).

Layers: this package imports only the shared bottom layer (`_validation`, `_registration`,
`_autocast`); `lowres_kernels.ops` imports its submodules lazily, on the first call with
backend="triton", so that importing lowres_kernels never imports triton.
"""
