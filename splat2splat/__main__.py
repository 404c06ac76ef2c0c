"""``python -m splat2splat ...`` (and ``torchrun ... -m splat2splat edit ...``): the ``splat2splat`` command."""

from splat2splat.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
