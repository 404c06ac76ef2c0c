"""Package list lives here because `cuda/` (top level) is installed as `splat2splat._cuda_src`."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["splat2splat*"]) + ["splat2splat._cuda_src"])
