"""The NeRF backend: original Instruct-NeRF2NeRF's representation (a nerfacto-style field) behind SceneBackend."""

from splat2splat.nerf.backend import NerfBackend, NerfConfig, mse_loss

__all__ = ["NerfBackend", "NerfConfig", "mse_loss"]
