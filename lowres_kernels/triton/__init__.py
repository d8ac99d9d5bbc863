"""Triton backend of the lowres ops (SPEC §1, §2), selected with backend="triton".

Each op is a `torch.library.custom_op` in the `lowres_triton` namespace whose implementation
launches the Triton kernels, with a fake implementation for tracing and an autograd formula
whose backward is a custom op of its own, so `torch.compile(fullgraph=True)` sees through both.
On machines without a GPU the kernels run on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1, which must be set before triton is first imported).

The submodules are imported lazily by `lowres_kernels.ops` so that importing lowres_kernels
never imports triton.
"""
