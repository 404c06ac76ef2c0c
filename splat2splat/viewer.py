"""Live browser view of a run (optional, the viewer extra: ``pip install -e .[viewer]``): ``splat2splat edit --viewer``.

viser serves a page on localhost that shows, in the scene's normalised frame, the Gaussians as they train
(rendered by the browser's own splat renderer) and every training camera as a frustum textured with its
CURRENT image, so one sees edited views spread through the dataset while the scene follows them. A NeRF
scene shows the cameras only. Updates are pushed every ``every`` steps; the run never waits for the browser.
"""

from __future__ import annotations

import numpy as np
import torch

from splat2splat.rotations import quaternion_to_matrix
from splat2splat.data.dataset import Dataset
from splat2splat.errors import InputError
from splat2splat.gaussians.model import SH_C0
from splat2splat.io import to_uint8
from splat2splat.scene import SceneBackend

THUMBNAIL_SIZE = 64  # frustum images are downsampled to this many pixels on the longer side


def require_viser():
    """The viser module, or one line saying how to install it (checked before a run does any work)."""
    try:
        import viser
    except ImportError:
        raise InputError(None, "--viewer needs the optional viser package (the viewer extra): "
                               "pip install -e .[viewer], or pip install viser") from None
    return viser


class LiveViewer:
    def __init__(self, port: int = 8080, every: int = 50, host: str = "127.0.0.1"):
        viser = require_viser()
        self.viser = viser
        self.server = viser.ViserServer(host=host, port=port, verbose=False)  # takes the next free port if busy
        self.every = every
        self.url = f"http://{host}:{self.server.get_port()}"
        print(f"live viewer: {self.url}")

    def update(self, backend: SceneBackend, dataset: Dataset) -> None:
        """Show the current scene and the current training images."""
        scene = backend.gaussians()
        if scene is not None:
            self.show_gaussians(scene.splats)
        self.show_cameras(dataset)

    def maybe_update(self, step: int, backend: SceneBackend, dataset: Dataset) -> None:
        if step % self.every == 0:
            self.update(backend, dataset)

    def show_gaussians(self, splats) -> None:
        with torch.no_grad():
            quats = torch.nn.functional.normalize(splats["quats"].float(), dim=-1)
            rotations = quaternion_to_matrix(quats)
            scales = torch.exp(splats["scales"].float())
            covariances = rotations @ torch.diag_embed(scales**2) @ rotations.transpose(-1, -2)
            colors = (splats["sh0"][:, 0].float() * SH_C0 + 0.5).clamp(0, 1)  # view-independent base colour
            opacities = torch.sigmoid(splats["opacities"].float())[:, None]
        self.server.scene.add_gaussian_splats("/scene", centers=_np(splats["means"]), covariances=_np(covariances),
                                              rgbs=_np(colors), opacities=_np(opacities))

    def show_cameras(self, dataset: Dataset) -> None:
        cameras = dataset.cameras
        for index in dataset.train_indices:
            height, width = cameras.image_size(index)
            c2w = cameras.camtoworlds[index].cpu().double().numpy()
            fov = 2 * np.arctan(height / (2 * float(cameras.fy[index])))
            self.server.scene.add_camera_frustum(
                f"/cameras/{index}", fov=float(fov), aspect=width / height, scale=0.08,
                wxyz=self.viser.transforms.SO3.from_matrix(c2w[:3, :3]).wxyz, position=c2w[:3, 3],
                image=to_uint8(thumbnail(dataset.current[index])))

    def close(self) -> None:
        self.server.stop()


def thumbnail(image: torch.Tensor) -> torch.Tensor:
    height, width = image.shape[:2]
    factor = max(1, max(height, width) // THUMBNAIL_SIZE)
    return image[::factor, ::factor]


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()
