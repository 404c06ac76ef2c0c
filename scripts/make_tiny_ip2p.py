"""Write a random-weight InstructPix2Pix pipeline folder that loads like ``timbrooks/instruct-pix2pix``.

Offline; no download. Examples::

    python scripts/make_tiny_ip2p.py models/tiny-ip2p                  # tiny, for tests and smoke runs
    python scripts/make_tiny_ip2p.py models/ip2p-random --full-size-random   # SD-1.5 sizes, for GPU timings

Then pass the folder to the editor: ``--model models/tiny-ip2p``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from splat2splat.testing.tiny_ip2p import build_full_size_random_ip2p, build_tiny_ip2p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="output folder (created; existing files are overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--full-size-random", action="store_true",
                        help="build the full-size IP2P architecture (SD 1.5 UNet and VAE, CLIP ViT-L/14 text "
                             "encoder, real 49,408-token CLIP vocabulary) with random weights: about 2.1 GB at "
                             "float16, for honest GPU speed and memory measurements")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="storage precision of the full-size weights (the tiny model is always float32)")
    args = parser.parse_args()

    if args.full_size_random:
        folder = build_full_size_random_ip2p(args.folder, seed=args.seed, dtype=getattr(torch, args.dtype))
    else:
        folder = build_tiny_ip2p(args.folder, seed=args.seed)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
