"""CLIP metrics: the direction formulas on hand-made embeddings, CLIP's preprocessing, model loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from splat2splat.errors import InputError
from splat2splat.evaluation.clip_metrics import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipPreprocessing,
                                                 direction_consistency, direction_similarity,
                                                 edit_direction_consistency, load_clip, preprocess_images)

E1, E2, E3 = torch.eye(3)


# ------------------------------------------------------------------------------------------ formulas

@pytest.mark.parametrize("source_text, target_text, expected", [
    (E1, E2, 1.0),                           # the image moved e1 -> e2, and so did the captions
    (E2, E1, -1.0),                          # the opposite way
    (E3, F.normalize(E1 + E2, dim=0), 0.0),  # text direction (0.71, 0.71, -1) is orthogonal to (-1, 1, 0)
    (E1, E3, 0.5),                           # (-1, 1, 0) . (-1, 0, 1) / (sqrt 2 * sqrt 2)
])
def test_direction_similarity_of_known_directions(source_text, target_text, expected):
    similarity = direction_similarity(E1[None], E2[None], source_text, target_text)
    assert similarity.shape == (1,)
    assert similarity.item() == pytest.approx(expected, abs=1e-6)


def test_direction_similarity_is_per_frame():
    original = torch.stack([E1, E1, E3])
    edited = torch.stack([E2, E3, E1])
    similarity = direction_similarity(original, edited, E1, E2)
    # (-1,1,0) vs (-1,1,0): 1;  (-1,0,1) vs (-1,1,0): 1/2;  (1,0,-1) vs (-1,1,0): -1/2
    assert similarity.tolist() == pytest.approx([1.0, 0.5, -0.5], abs=1e-6)


def test_direction_consistency_compares_the_camera_motion_in_both_scenes():
    """in2n's: cos(E(o_i+1) - E(o_i), E(e_i+1) - E(e_i)), the step between consecutive frames in both scenes."""
    original = torch.stack([E1, E2, E1])
    same_motion = original + 0.5 * E3  # the edited frames move the way the original ones do
    reversed_motion = torch.stack([E2, E1, E2])
    assert direction_consistency(original, same_motion).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert direction_consistency(original, reversed_motion).tolist() == pytest.approx([-1.0, -1.0], abs=1e-6)
    # Edited frames that move orthogonally to the original ones: (e2 - e1) vs (e3 - e1), then (e1 - e2) vs (e1 - e3).
    assert direction_consistency(original, torch.stack([E1, E3, E1])).tolist() == pytest.approx([0.5, 0.5], abs=1e-6)


def test_an_unedited_scene_is_perfectly_consistent_and_has_no_edit_direction():
    original = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert direction_consistency(original, original).tolist() == pytest.approx([1.0] * 4, abs=1e-6)
    assert edit_direction_consistency(original, original).tolist() == [0.0] * 4


def test_edit_direction_consistency_compares_consecutive_changes():
    original = torch.zeros(4, 3)
    edited = torch.stack([E1, 2 * E1, -E1, E2])  # changes: e1, 2 e1 (same way), -e1 (reversed), e2 (orthogonal)
    assert edit_direction_consistency(original, edited).tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-6)


def test_consistent_edit_of_a_moving_camera_scores_one():
    """The same change added to every frame of a path is perfectly consistent, however the frames differ."""
    original = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    change = torch.linspace(-1, 1, 8)
    assert edit_direction_consistency(original, original + change).tolist() == pytest.approx([1.0] * 5, abs=1e-6)
    assert direction_consistency(original, original + change).tolist() == pytest.approx([1.0] * 5, abs=1e-6)


# ------------------------------------------------------------------------------------- preprocessing

def textured_image(height: int, width: int, seed: int) -> torch.Tensor:
    """An 8-bit image with smooth structure and pixel noise (both matter for resampling)."""
    generator = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=(height, width), mode="bilinear")
    image = 0.7 * smooth[0].permute(1, 2, 0) + 0.3 * torch.rand(height, width, 3, generator=generator)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def clip_image_processors():
    """transformers' CLIPImageProcessor, and the PIL one of transformers 5 (what transformers 4's was) when present."""
    import transformers

    names = ["CLIPImageProcessor", "CLIPImageProcessorPil"]
    return [getattr(transformers, name)() for name in names if hasattr(transformers, name)]


# Our preprocessing works on floats, the processor on 8-bit images: they may differ by its rounding.
ONE_LEVEL = 1 / 255 / min(OPENAI_CLIP_STD)


@pytest.mark.parametrize("height, width", [(64, 96), (300, 200), (480, 640), (97, 51), (224, 224)])
def test_preprocessing_matches_clip_image_processor(height, width):
    from PIL import Image

    image = textured_image(height, width, seed=height * width)
    ours = preprocess_images(image[None].float() / 255, ClipPreprocessing(resize="clip"))
    for processor in clip_image_processors():
        reference = processor(images=Image.fromarray(image.numpy()), return_tensors="pt")["pixel_values"]
        assert ours.shape == reference.shape == (1, 3, 224, 224)
        difference = (ours - reference).abs()
        # A wrong filter (no antialiasing, bilinear) or a crop one pixel off differs by 4 to 60 levels on average.
        assert difference.max() < 1.5 * ONE_LEVEL and difference.mean() < 0.6 * ONE_LEVEL, type(processor).__name__


@pytest.mark.parametrize("resize", ["in2n", "clip"])
def test_preprocessing_is_batched(resize):
    images = torch.stack([textured_image(60, 80, seed) for seed in range(3)]).float() / 255
    batch = preprocess_images(images, ClipPreprocessing(resize=resize))
    one_by_one = torch.cat([preprocess_images(image[None], ClipPreprocessing(resize=resize)) for image in images])
    assert torch.allclose(batch, one_by_one, atol=1e-6)


def test_the_default_preprocessing_is_in2n_s_squash():
    """in2n's metrics script: F.interpolate(image, 224, bicubic, align_corners=False), then CLIP's mean and std."""
    image = textured_image(97, 151, seed=5).float()[None] / 255
    pixels = F.interpolate(image.permute(0, 3, 1, 2), size=224, mode="bicubic", align_corners=False)
    expected = (pixels - torch.tensor(OPENAI_CLIP_MEAN).reshape(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).reshape(1, 3, 1, 1)
    assert ClipPreprocessing().resize == "in2n"
    assert torch.allclose(preprocess_images(image, ClipPreprocessing()), expected, atol=1e-6)


def test_in2n_resize_squashes_the_whole_image_into_the_square():
    """in2n's script keeps the image's sides (no crop): a red left edge stays in the input; CLIP's crop drops it."""
    image = torch.ones(1, 100, 300, 3) * 0.5
    image[:, :, :20] = torch.tensor([1.0, 0.0, 0.0])
    squashed = preprocess_images(image, ClipPreprocessing(resize="in2n"))
    cropped = preprocess_images(image, ClipPreprocessing(resize="clip"))
    red = (1.0 - ClipPreprocessing().mean[0]) / ClipPreprocessing().std[0]
    assert squashed.shape == cropped.shape == (1, 3, 224, 224)
    assert squashed[0, 0, :, 0].mean() == pytest.approx(red, abs=1e-3)
    assert cropped[0, 0, :, 0].mean() < red - 1


# ------------------------------------------------------------------------------------------- loading

def test_tiny_clip_loads_with_the_real_tokenizer_and_clip_preprocessing(tiny_clip_folder):
    encoder = load_clip(str(tiny_clip_folder), "cpu")
    assert encoder.preprocessing == ClipPreprocessing()  # in2n's squash to the processor's 224x224
    assert load_clip(str(tiny_clip_folder), "cpu", resize="clip").preprocessing == ClipPreprocessing(resize="clip")
    # OpenAI CLIP's token ids: <start> a photo of a <end>
    ids = encoder.tokenizer(["a photo of a"])["input_ids"][0]
    assert ids == [49406, 320, 1125, 539, 320, 49407]
    texts = encoder.encode_texts(["a photo of a bear", "a photo of a grizzly bear"])
    images = encoder.encode_images([torch.rand(40, 60, 3), torch.rand(40, 60, 3), torch.rand(50, 50, 3)])
    assert texts.shape[1] == images.shape[1] and images.shape[0] == 3
    assert torch.allclose(texts.norm(dim=-1), torch.ones(2)) and torch.allclose(images.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(texts[0], texts[1])


def test_missing_model_folder_says_how_to_supply_one(tmp_path):
    with pytest.raises(InputError, match="no such CLIP model folder.*--clip-model PATH") as error:
        load_clip(str(tmp_path / "nowhere"))
    assert error.value.path == tmp_path / "nowhere"


def test_folder_without_a_clip_model_is_one_clear_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="not a loadable CLIP model folder") as error:
        load_clip(str(tmp_path))
    assert "\n" not in str(error.value)


def test_unreachable_hub_model_says_how_to_supply_one():
    """The tests run with HF_HUB_OFFLINE=1 (conftest): a hub id not in the cache cannot be had."""
    with pytest.raises(InputError, match="cannot load this CLIP model.*--clip-model PATH.*HF cache") as error:
        load_clip("splat2splat-tests/no-such-clip")
    assert "\n" not in str(error.value)
