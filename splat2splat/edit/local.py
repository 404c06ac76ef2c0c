"""Local edits: the Iterative Dataset Update inside a region, the rest of the scene kept exactly.

Two mechanisms keep the edit from leaking out of the region (:mod:`splat2splat.edit.regions`):

* every edited image is composited with the view's ORIGINAL outside the view's region mask (soft inner edge,
  ``RegionConfig.feather``) at the loop's one write-back point, so the training images never change outside
  the region, whichever way the edit was computed (serial, batched, behind training, on editor processes,
  igs2gs' update); the loss is taken on the whole composited image, which therefore also pulls in-region
  content back from where the original shows;
* on a Gaussian scene, the Gaussians outside the region are frozen (:meth:`GaussianBackend.freeze`): they get
  no gradient, keep their exact values, and are never culled.

On the NeRF backend only the composite applies: the field is shared by all of space, so it is not frozen, but
it trains towards the original images outside the masks.
"""

from __future__ import annotations

import torch

from splat2splat.edit.idu import IterativeDatasetUpdate
from splat2splat.edit.regions import feathered, composite


class LocalIterativeDatasetUpdate(IterativeDatasetUpdate):
    """The IDU with each edit composited into the original through the view's region mask."""

    def __init__(self, *args, masks: list[torch.Tensor], feather: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.feather = feather
        self.set_masks(masks)

    def set_masks(self, masks: list[torch.Tensor]) -> None:
        self.masks = [mask.detach().float().cpu() for mask in masks]
        self.weights = [feathered(mask, self.feather) for mask in self.masks]

    def apply(self, view: int, edited: torch.Tensor) -> None:
        super().apply(view, composite(edited, self.dataset.original(view), self.weights[view]))

    def state_dict(self) -> dict:
        # The masks as the edit started: recomputing them from a half-edited scene would differ.
        return {**super().state_dict(), "region_masks": [mask.clone() for mask in self.masks]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        masks = state.get("region_masks")
        if not isinstance(masks, list) or len(masks) != len(self.dataset) or any(
                not isinstance(m, torch.Tensor) or tuple(m.shape) != self.dataset.image_size(i)
                for i, m in enumerate(masks)):
            raise ValueError("the checkpoint's region masks do not fit the dataset")
        self.set_masks(masks)
