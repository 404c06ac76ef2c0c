"""Speed options of the InstructPix2Pix editor: a compiled UNet, CUDA graphs and the attention kernel.

None of them changes what an edit computes (the tests compare each with the default editor); each is off by
default and is worth turning on only where ``scripts/bench_speed.py --editor-options`` measures a gain on the
machine at hand (docs/BENCHMARKS.md, "Editor speed options"). Channels-last weights and the precision
(``float16`` / ``bfloat16``) are the editor's other speed options (:class:`~splat2splat.edit.ip2p.IP2PConfig`).

* ``compile``: ``torch.compile`` of the UNet, the one model an edit runs 20 times. ``inductor`` generates
  fused kernels; ``inductor-cuda-graphs`` (inductor's ``mode="reduce-overhead"``) also replays them as CUDA
  graphs, which removes the per-kernel launch cost of small batches; ``cuda-graphs`` replays the eager kernels
  as CUDA graphs without inductor (torch.compile's ``cudagraphs`` backend). Each batch shape (views per
  batch, image size) compiles once, on its first edit: a minute or more for the real UNet.
* ``attention``: which of PyTorch's scaled-dot-product-attention kernels the UNet uses (``auto`` lets PyTorch
  choose per call, as diffusers does), or ``unfused`` for diffusers' pre-PyTorch-2 attention (explicit matmul
  + softmax). A kernel the device cannot run for the UNet's head sizes is refused when the editor is built, in
  one line. The VAE keeps PyTorch's choice: it attends twice per edit, and its single 512-wide head is beyond
  what the flash kernels take.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from typing import Literal

import torch

from splat2splat.errors import InputError

logger = logging.getLogger(__name__)

CompileMode = Literal["off", "inductor", "inductor-cuda-graphs", "cuda-graphs"]
AttentionKernel = Literal["auto", "flash", "efficient", "cudnn", "math", "unfused"]
# torch.compile's arguments for each mode.
COMPILE_ARGUMENTS: dict[str, dict] = {
    "inductor": dict(mode="default"),
    "inductor-cuda-graphs": dict(mode="reduce-overhead"),
    "cuda-graphs": dict(backend="cudagraphs"),
}
CUDA_GRAPH_MODES = ("inductor-cuda-graphs", "cuda-graphs")
INDUCTOR_MODES = ("inductor", "inductor-cuda-graphs")
SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")


def c_compiler() -> str | None:
    """The C++ compiler inductor would use (it builds its CPU kernels and Triton's launchers with one)."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    return next((found for name in candidates if (found := shutil.which(name))), None)


def check_speed_options(compile_mode: str, attention: str, offload: bool, device: torch.device) -> None:
    """One-line errors for combinations that cannot run, before any model is loaded."""
    if compile_mode not in ("off", *COMPILE_ARGUMENTS):
        raise InputError(None, f"--idu.editor.compile {compile_mode}: use off, {', '.join(COMPILE_ARGUMENTS)}")
    if attention not in ("auto", "unfused", *SDPA_KERNELS):
        raise InputError(None, f"--idu.editor.attention {attention}: use auto, unfused, {', '.join(SDPA_KERNELS)}")
    if compile_mode in CUDA_GRAPH_MODES and device.type != "cuda":
        raise InputError(None, f"--idu.editor.compile {compile_mode}: CUDA graphs need the editor on a CUDA device "
                               f"(it is on {device.type}); use inductor or off")
    if compile_mode in INDUCTOR_MODES and c_compiler() is None:
        raise InputError(None, f"--idu.editor.compile {compile_mode}: torch.compile's inductor needs a C++ compiler "
                               "(g++ or clang++, or one named by $CXX) and none is installed here")
    if compile_mode != "off" and offload:
        raise InputError(None, f"--idu.editor.compile {compile_mode} with --idu.editor.offload: a compiled UNet "
                               "stays on the GPU (pass --idu.editor.no-offload, or compile off)")


def sdpa_backend(kernel: str):
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[kernel]


def attention_head_sizes(module: torch.nn.Module) -> set[int]:
    """The head sizes of a diffusers model's attention layers."""
    from diffusers.models.attention_processor import Attention

    return {layer.inner_dim // layer.heads for layer in module.modules() if isinstance(layer, Attention)}


def check_attention_kernel(kernel: str, head_sizes: set[int], device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, in one line, an attention kernel PyTorch cannot run here (it would fail mid-edit otherwise)."""
    if kernel not in SDPA_KERNELS:
        return
    from torch.nn.attention import sdpa_kernel

    for head_size in sorted(head_sizes):
        probe = torch.zeros(1, 1, 16, head_size, device=device, dtype=dtype)
        try:
            with sdpa_kernel(sdpa_backend(kernel)):
                torch.nn.functional.scaled_dot_product_attention(probe, probe, probe)
        except RuntimeError:
            raise InputError(None, f"--idu.editor.attention {kernel}: PyTorch has no {kernel} attention kernel for "
                                   f"{str(dtype).removeprefix('torch.')} heads of size {head_size} on "
                                   f"{device.type} (use auto)") from None


def attention_processor(kernel: str):
    """The diffusers attention processor that computes attention with ``kernel`` (None: leave the model's)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if kernel == "auto":
        return None
    if kernel == "unfused":
        return AttnProcessor()

    class OneKernelProcessor(AttnProcessor2_0):
        """diffusers' scaled-dot-product attention, restricted to one PyTorch kernel."""

        # The parent's parameters, named: diffusers passes only the keyword arguments a processor names.
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                     *args, **kwargs):
            from torch.nn.attention import sdpa_kernel

            with sdpa_kernel(sdpa_backend(kernel)):
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                        *args, **kwargs)

    return OneKernelProcessor()


def use_attention_kernel(kernel: str, unet: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Make the UNet compute attention with ``kernel``, after checking the kernel runs its heads here."""
    processor = attention_processor(kernel)
    if processor is None:
        return
    check_attention_kernel(kernel, attention_head_sizes(unet), device, dtype)
    unet.set_attn_processor(processor)


def compiled(unet: torch.nn.Module, compile_mode: str) -> Callable:
    """The UNet compiled in ``compile_mode`` (not 'off'); each new input shape compiles on its first call."""
    logger.info("the UNet is compiled (--idu.editor.compile %s): the first edit of each batch shape takes a "
                "minute or more", compile_mode)
    compiled_unet = torch.compile(unet, dynamic=False, **COMPILE_ARGUMENTS[compile_mode])
    if compile_mode not in CUDA_GRAPH_MODES:
        return compiled_unet

    def replay(*args, **kwargs):
        # Every UNet call is a new step for the CUDA-graph trees: its output is consumed before the next
        # call, so the graph may reuse the output memory instead of recording a new graph.
        torch.compiler.cudagraph_mark_step_begin()
        return compiled_unet(*args, **kwargs)

    return replay
