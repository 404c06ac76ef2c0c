"""The editor's speed options: each gives the default editor's edits, and what cannot run is one clear line."""

from __future__ import annotations

import pytest
import torch

from splat2splat.edit import ip2p_speed
from splat2splat.edit.ip2p import IP2PConfig, InstructPix2PixEditor
from splat2splat.edit.ip2p_speed import attention_head_sizes, c_compiler, check_speed_options
from splat2splat.errors import InputError


def tiny_editor(folder, **options) -> InstructPix2PixEditor:
    return InstructPix2PixEditor.from_config(IP2PConfig(model=str(folder), diffusion_steps=3, device="cpu",
                                                        dtype="float32", **options))


def one_edit(editor: InstructPix2PixEditor) -> torch.Tensor:
    images = torch.rand(2, 48, 40, 3, generator=torch.Generator().manual_seed(4))
    return editor.edit(images[0], images[1], "make it snowy", (0.3, 0.9), torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def default_edit(tiny_ip2p_folder) -> torch.Tensor:
    return one_edit(tiny_editor(tiny_ip2p_folder))


@pytest.mark.parametrize("kernel", ["math", "flash", "unfused"])
def test_attention_kernels_give_the_default_edits(tiny_ip2p_folder, default_edit, kernel):
    editor = tiny_editor(tiny_ip2p_folder, attention=kernel)
    expected = "AttnProcessor" if kernel == "unfused" else "OneKernelProcessor"
    assert attention_head_sizes(editor.models.unet) == {4, 8}
    assert {type(p).__name__ for p in editor.models.unet.attn_processors.values()} == {expected}
    # The VAE keeps diffusers' default (its 512-wide head in the real model is beyond the flash kernels).
    assert {type(p).__name__ for p in editor.models.vae.attn_processors.values()} == {"AttnProcessor2_0"}
    torch.testing.assert_close(one_edit(editor), default_edit, atol=1e-5, rtol=0)



def test_the_one_kernel_processor_names_every_argument_diffusers_passes():
    """diffusers hands a processor only the keyword arguments its __call__ names (it drops temb otherwise)."""
    import inspect

    from diffusers.models.attention_processor import AttnProcessor2_0

    from splat2splat.edit.ip2p_speed import attention_processor

    ours = inspect.signature(attention_processor("math").__call__).parameters
    assert list(ours) == list(inspect.signature(AttnProcessor2_0().__call__).parameters)


def test_a_kernel_the_device_lacks_is_refused_when_the_editor_is_built(tiny_ip2p_folder):
    with pytest.raises(InputError, match="--idu.editor.attention efficient: PyTorch has no efficient attention "
                                         "kernel for float32 heads of size 4 on cpu"):
        tiny_editor(tiny_ip2p_folder, attention="efficient")


@pytest.fixture
def with_a_compiler(monkeypatch):
    """Inductor's C++ compiler taken as found: these tests are about other checks, on machines without one too."""
    monkeypatch.setattr(ip2p_speed, "c_compiler", lambda: "c++")


@pytest.mark.parametrize("mode", ["inductor-cuda-graphs", "cuda-graphs"])
def test_cuda_graphs_need_a_cuda_editor(mode, with_a_compiler):
    with pytest.raises(InputError, match=f"--idu.editor.compile {mode}: CUDA graphs need the editor on a CUDA"):
        check_speed_options(mode, "auto", False, torch.device("cpu"))
    check_speed_options(mode, "auto", False, torch.device("cuda"))  # a device object needs no GPU


def test_compile_does_not_combine_with_offload(with_a_compiler):
    with pytest.raises(InputError, match="--idu.editor.compile inductor with --idu.editor.offload"):
        check_speed_options("inductor", "auto", True, torch.device("cuda"))
    check_speed_options("off", "auto", True, torch.device("cuda"))


def test_the_edit_command_refuses_cuda_graphs_on_the_cpu_before_writing(tmp_path, demo_scene, capsys):
    from splat2splat.cli import entrypoint

    output = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(["edit", "--data", str(demo_scene), "--prompt", "snow", "--output", str(output), "--device", "cpu",
                    "--idu.editor.compile", "cuda-graphs"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --idu.editor.compile cuda-graphs: CUDA graphs need") and len(err.splitlines()) == 1
    assert not output.exists()


def test_inductor_without_a_compiler_is_one_line(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(InputError, match="--idu.editor.compile inductor: torch.compile's inductor needs a C"):
        check_speed_options("inductor", "auto", False, torch.device("cpu"))
    check_speed_options("cuda-graphs", "auto", False, torch.device("cuda"))  # no compiler needed


@pytest.mark.slow
@pytest.mark.skipif(c_compiler() is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_inductor_compiled_unet_gives_the_default_edits(tiny_ip2p_folder, default_edit):
    """torch.compile really runs (the compiled UNet is what the loop calls) and changes only rounding."""
    import torch._dynamo

    torch._dynamo.reset()
    editor = tiny_editor(tiny_ip2p_folder, compile="inductor")
    torch.testing.assert_close(one_edit(editor), default_edit, atol=1e-5, rtol=0)
    assert editor.unet() is not editor.models.unet
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------- on a GPU (gpu_check)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def edits_in_an_editor_thread(editor: InstructPix2PixEditor, count: int) -> list[torch.Tensor]:
    """``count`` edits of the same images from one worker thread on its own CUDA stream, as the pipelined loop's
    editor thread runs them (splat2splat.edit.executors.EditQueue.run)."""
    import concurrent.futures

    stream = torch.cuda.Stream()

    def on_the_editor_stream():
        with torch.cuda.stream(stream):
            return one_edit(editor).cpu()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
        return [thread.submit(on_the_editor_stream).result() for _ in range(count)]


@pytest.fixture
def full_float32(monkeypatch):
    """No TF32 in convolutions and matmuls (cuDNN allows it by default): eager and compiled kernels may then
    differ only by float32 reassociation."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.throughput
@pytest.mark.parametrize("mode", ["inductor", "inductor-cuda-graphs", "cuda-graphs"])
def test_compiled_unets_edit_like_eager_on_the_gpu_in_the_editor_thread(tiny_ip2p_folder, mode, full_float32):
    """The compiled UNet (recorded, then replayed: three edits) gives the eager editor's edit in float32, from
    the editor thread of --idu.edit-lag."""
    import torch._dynamo

    torch._dynamo.reset()
    eager = InstructPix2PixEditor.from_config(IP2PConfig(model=str(tiny_ip2p_folder), diffusion_steps=3, device="cuda",
                                                         dtype="float32"))
    expected = one_edit(eager).cpu()
    compiled = InstructPix2PixEditor.from_config(IP2PConfig(model=str(tiny_ip2p_folder), diffusion_steps=3,
                                                            device="cuda", dtype="float32", compile=mode))
    for edited in edits_in_an_editor_thread(compiled, 3):
        torch.testing.assert_close(edited, expected, atol=1e-4, rtol=0)
    assert compiled.unet() is not compiled.models.unet
    torch._dynamo.reset()


@requires_cuda
@pytest.mark.gpu
@pytest.mark.throughput
@pytest.mark.parametrize("kernel", ["flash", "efficient", "cudnn", "math", "unfused"])
def test_attention_kernels_on_the_gpu_give_the_default_half_precision_edits(tiny_ip2p_folder, kernel, record_property):
    """Each kernel either runs the tiny model's heads in float16 and edits as PyTorch's own choice does, or
    is refused in one line when the editor is built (never mid-edit)."""
    def half_editor(**options):
        return InstructPix2PixEditor.from_config(IP2PConfig(model=str(tiny_ip2p_folder), diffusion_steps=3,
                                                            device="cuda", dtype="float16", **options))

    expected = one_edit(half_editor())
    try:
        editor = half_editor(attention=kernel)
    except InputError as error:  # a refusal is a right answer too, if it is this one line (in the JUnit report)
        assert f"--idu.editor.attention {kernel}: PyTorch has no {kernel} attention kernel" in str(error)
        record_property("refused", str(error))
        return
    record_property("refused", "")
    torch.testing.assert_close(one_edit(editor), expected, atol=2e-2, rtol=0)
