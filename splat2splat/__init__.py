"""splat2splat: edit 3D Gaussian-splatting scenes with text instructions."""

__version__ = "0.1.0"
