"""Loading pretrained models (InstructPix2Pix, CLIP) from a Hugging Face hub id or a local folder.

``HF_HUB_OFFLINE`` is honoured by the libraries themselves; every failure becomes one :class:`InputError`
that says how to supply the model.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator

from splat2splat.errors import InputError


def looks_like_path(model: str) -> bool:
    """A hub id is ``owner/name``; anything else with path syntax names a local folder."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or Path(model).exists()


def model_source(model: str, kind: str, how_to_supply: str) -> str:
    """What ``from_pretrained`` gets: the expanded local folder (which must exist) or the hub id."""
    if not looks_like_path(model):
        return model
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise InputError(folder, f"no such {kind} folder; {how_to_supply}")
    return str(folder)


def load_failure(model: str, error: Exception, kind: str, how_to_supply: str) -> InputError:
    """The one-line error for a model that could not be loaded (a broken folder, or an unreachable hub id)."""
    cause = str(error).split("\n")[0][:300]
    if looks_like_path(model):
        return InputError(Path(model).expanduser(), f"not a loadable {kind} folder ({cause}); {how_to_supply}")
    return InputError(model, f"cannot load this {kind} ({cause}); {how_to_supply}")


@contextlib.contextmanager
def quiet_model_loading() -> Iterator[None]:
    """Silence the library chatter (missing accelerate, ignored config keys) while loading."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    previous = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            # Recent diffusers renamed torch_dtype to dtype; older ones (>= 0.27 is supported) only know torch_dtype.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(previous[0])
        transformers_logging.set_verbosity(previous[1])
