"""Small settings that make the backends train in seconds on a CPU (tests, benchmarks, CPU demos).

Real scenes on a GPU use the config defaults; these are passed explicitly where a CPU run needs them.
Measured figures: docs/BENCHMARKS.md ("NeRF encoding").
"""

# The NeRF on the bounded 64-px demo scene: a box instead of the contraction (the demo is bounded), 64
# intervals per ray, 512 rays per step, a 64^3 occupancy grid updated early and often, no dilation.
NERF_CPU_DEMO_SETTINGS = dict(rays_per_batch=512, samples_per_ray=64, unbounded=False,
                              plane_resolutions=(32, 64, 128, 256), occupancy_resolution=64,
                              occupancy_warmup_steps=32, occupancy_update_every=8, occupancy_dilation=0,
                              lr_decay_steps=600, render_chunk=4096)
