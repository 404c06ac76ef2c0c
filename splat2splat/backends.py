"""The registry of scene backends: every place that needs "a backend called X" asks here.

Each entry names the backend class (which implements :class:`~splat2splat.scene.SceneBackend` and builds
itself with ``from_dataset(dataset, config)`` / ``from_state_dict(state, device)``), its config class (a job
holds exactly one backend config; its class says which backend the job uses) and the reconstruction loss of
its reference method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from splat2splat.data.dataset import Dataset
from splat2splat.errors import InputError
from splat2splat.gaussians.backend import GaussianBackend, GaussianConfig
from splat2splat.losses import LossWeights, PhotometricLoss
from splat2splat.nerf.backend import NerfBackend, NerfConfig, mse_loss
from splat2splat.scene import ImageLoss, SceneBackend

BackendName = Literal["gaussian", "nerf"]
SceneConfig = GaussianConfig | NerfConfig  # the config of one registered backend


@dataclass(frozen=True)
class BackendKind:
    backend_class: type
    config_class: type
    option_prefix: str  # how its options are spelled on the command line (``--gaussians.*``, ``--nerf.*``)
    reconstruction_loss: Callable[[], ImageLoss]  # the scene-fitting loss of the reference method
    holds_gaussians: bool  # its scenes' ``gaussians()`` is not None (a region may be given as a volume)
    # What a training step hands the loss: whole rendered views, or square ray patches whose side is the
    # config's ``patch_size`` (a patch-wise loss such as in2n's LPIPS then needs no cropping).
    trains_on: Literal["images", "patches"]


BACKENDS: dict[str, BackendKind] = {
    # 3DGS / gsplat: 0.8 L1 + 0.2 D-SSIM.
    "gaussian": BackendKind(GaussianBackend, GaussianConfig, "gaussians", lambda: PhotometricLoss(LossWeights()),
                            holds_gaussians=True, trains_on="images"),
    # nerfacto: MSE.
    "nerf": BackendKind(NerfBackend, NerfConfig, "nerf", lambda: mse_loss, holds_gaussians=False,
                        trains_on="patches"),
}


def backend_kind(name: str) -> BackendKind:
    if name not in BACKENDS:
        raise InputError(None, f"unknown backend {name!r}: use {' or '.join(BACKENDS)}")
    return BACKENDS[name]


def backend_name(config: Any) -> str:
    """The backend whose config ``config`` is (a job's ``scene``)."""
    for name, kind in BACKENDS.items():
        if type(config) is kind.config_class:
            return name
    raise TypeError(f"{type(config).__name__} is the config of no registered backend")


def make_backend(name: str, dataset: Dataset, config: Any) -> SceneBackend:
    """An untrained scene of backend ``name`` for ``dataset``."""
    return backend_kind(name).backend_class.from_dataset(dataset, config)


def backend_from_state(name: str, state: dict, device: str | None = None) -> SceneBackend:
    """A backend rebuilt from its ``state_dict()`` (``device``: where it lives now, default the saved one)."""
    return backend_kind(name).backend_class.from_state_dict(state, device)


def rebuilt_with(backend: SceneBackend, **config_changes: Any) -> SceneBackend:
    """``backend`` rebuilt with some config fields changed (e.g. the NeRF's patch size when an edit starts):
    configuration is passed when a backend is built, never patched into a live one."""
    state = backend.state_dict()
    state["config"] = {**state["config"], **config_changes}
    return backend_from_state(backend.name, state)


def reconstruction_loss(name: str) -> ImageLoss:
    return backend_kind(name).reconstruction_loss()
