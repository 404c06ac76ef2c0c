"""An exported PLY really displays in a published web viewer (gsplat.js from npm, headless Chromium).

The scene is a red ball left of the origin and a green ball right of it, in the ORIGINAL frame, built in a
non-trivial normalised frame: the balls only land where the viewer's camera looks if the export undoes
the normalisation. The page (tests/web_viewer/index.html) renders it and POSTs the canvas back to a
local http.server; nothing goes to the network.

Needs: `chromium` (Debian package) and `npm ci --prefix tests/web_viewer`; skipped without them.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from splat2splat.data.dataset import SceneNormalization
from splat2splat.gaussians.model import rgb_to_sh
from splat2splat.gaussians.ply import save_ply

VIEWER_DIR = Path(__file__).resolve().parents[1] / "web_viewer"
GSPLAT_JS = VIEWER_DIR / "node_modules" / "gsplat" / "dist" / "index.es.js"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
RESULT_TIMEOUT_S = 90  # software WebGL on a busy 2-core CI machine is slow; a normal run takes a few seconds

NORMALIZATION = SceneNormalization(center=(3.0, -2.0, 1.0), scale=0.5)
IMAGE_SIZE = 256
FOCAL = 256  # set in index.html; the camera is at (0, 0, -5) looking along +z
CAMERA_DISTANCE = 5.0
BALL_X = 1.0  # original-frame centres (-1, 0, 0) red and (1, 0, 0) green
BALL_RADIUS = 0.4


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


requires_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="needs Chromium for the web-viewer check (apt-get install chromium)")
requires_viewer_packages = pytest.mark.skipif(
    not GSPLAT_JS.is_file(), reason="needs the viewer's npm packages (npm ci --prefix tests/web_viewer)")


def two_balls(n_per_ball: int = 400) -> torch.nn.ParameterDict:
    """A red ball at x = -1 and a green ball at x = +1 (original frame), stored in the normalised frame."""
    g = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(2 * n_per_ball, 3, generator=g), dim=1)
    radii = BALL_RADIUS * torch.rand(2 * n_per_ball, 1, generator=g) ** (1 / 3)
    sides = torch.cat([-torch.ones(n_per_ball), torch.ones(n_per_ball)])
    centres = torch.stack([sides * BALL_X, torch.zeros_like(sides), torch.zeros_like(sides)], 1)
    colors = torch.where(sides[:, None] < 0, torch.tensor([1.0, 0.1, 0.1]), torch.tensor([0.1, 1.0, 0.1]))
    n = 2 * n_per_ball
    original_std = 0.06
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter(NORMALIZATION.to_normalized(centres + directions * radii)),
        "scales": torch.nn.Parameter(torch.full((n, 3), math.log(original_std * NORMALIZATION.scale))),
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1)),
        "opacities": torch.nn.Parameter(torch.full((n,), 4.0)),
        "sh0": torch.nn.Parameter(rgb_to_sh(colors)[:, None, :]),
        "shN": torch.nn.Parameter(torch.zeros(n, 15, 3)),
    })


class ViewerRequestHandler(http.server.SimpleHTTPRequestHandler):
    """Serves tests/web_viewer, the scene at /scene.ply, and takes the page's report at POST /result."""

    def __init__(self, *args, scene: Path, results: queue.Queue, **kwargs):
        self.scene = scene
        self.results = results
        super().__init__(*args, directory=str(VIEWER_DIR), **kwargs)

    def translate_path(self, path: str) -> str:
        if path.split("?")[0] == "/scene.ply":
            return str(self.scene)
        return super().translate_path(path)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.results.put(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def viewer_server(tmp_path) -> Iterator[tuple[str, Path, queue.Queue]]:
    """A local server on a free port: yields (base URL, where to put the scene, the results queue)."""
    scene, results = tmp_path / "scene.ply", queue.Queue()
    handler = functools.partial(ViewerRequestHandler, scene=scene, results=results)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", scene, results
    finally:
        server.shutdown()
        server.server_close()


def chromium_command(url: str, profile: Path) -> list[str]:
    return [
        find_chromium(), "--headless", "--no-sandbox",
        # WebGL2 through SwiftShader: a software GPU, so no real one (nor a display) is needed.
        "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={IMAGE_SIZE},{IMAGE_SIZE}", url,
    ]


def render_in_browser(url: str, results: queue.Queue, workdir: Path) -> dict:
    """Open ``url`` in headless Chromium and return the page's report; Chromium is stopped afterwards."""
    log = workdir / "chromium.log"  # a file, not a pipe: a full pipe would block a chatty Chromium
    with log.open("wb") as log_file:
        process = subprocess.Popen(chromium_command(url, workdir / "chromium-profile"), stdout=log_file,
                                   stderr=log_file, start_new_session=True)  # its own group: helpers stop with it
    try:
        return results.get(timeout=RESULT_TIMEOUT_S)
    except queue.Empty:
        pytest.fail(f"the viewer page reported nothing within {RESULT_TIMEOUT_S} s (chromium exit code "
                    f"{process.poll()}); end of the chromium log:\n{log.read_text(errors='replace')[-3000:]}")
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def decode_png(data_url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix), data_url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix):]))).convert("RGB")).astype(int)


def expected_ball_box(side: int) -> tuple[slice, slice]:
    """Pixel rows and columns of the ball at x = side * BALL_X, from the pinhole camera in index.html."""
    centre = IMAGE_SIZE / 2 + FOCAL * side * BALL_X / CAMERA_DISTANCE
    half = FOCAL * BALL_RADIUS / (CAMERA_DISTANCE - BALL_RADIUS)
    return (slice(int(IMAGE_SIZE / 2 - half), int(IMAGE_SIZE / 2 + half)),
            slice(int(centre - half), int(centre + half)))


def two_balls_problems(image: np.ndarray) -> list[str]:
    """What is wrong with a rendering of :func:`two_balls` (empty when it shows the scene)."""
    problems = []
    red = (image[..., 0] > 100) & (image[..., 1] < 80)
    green = (image[..., 1] > 100) & (image[..., 0] < 80)
    lit = image.max(axis=2) > 32
    left_box, right_box = expected_ball_box(-1), expected_ball_box(+1)
    box_area = (left_box[0].stop - left_box[0].start) * (left_box[1].stop - left_box[1].start)
    if red[left_box].sum() < 0.3 * box_area:
        problems.append(f"no red ball on the left ({red[left_box].sum()} red pixels where it belongs)")
    if green[right_box].sum() < 0.3 * box_area:
        problems.append(f"no green ball on the right ({green[right_box].sum()} green pixels where it belongs)")
    if red[right_box].any() or green[left_box].any():
        problems.append("colours or the x axis are swapped")
    inside_balls = np.zeros_like(lit)
    inside_balls[left_box] = inside_balls[right_box] = True
    # Only the thin soft edges of the balls may light pixels outside their boxes.
    if lit[~inside_balls].mean() > 0.03:
        problems.append(f"{lit[~inside_balls].mean():.1%} of the background is lit")
    return problems


@pytest.mark.parametrize("sabotage", ["none", "black", "swapped", "shifted"])
def test_the_image_check_fails_when_the_scene_is_not_shown(sabotage):
    """The check itself: a rendering drawn from the expected geometry passes, anything else fails."""
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=int)
    if sabotage != "black":
        for side, channel in ((-1, 0), (+1, 1)):
            rows, columns = expected_ball_box(-side if sabotage == "swapped" else side)
            if sabotage == "shifted":
                rows = slice(rows.start + 60, rows.stop + 60)
            image[rows, columns, channel] = 255
    assert bool(two_balls_problems(image)) == (sabotage != "none")


@requires_chromium
@requires_viewer_packages
def test_exported_ply_shows_in_gsplat_js(viewer_server, tmp_path):
    base_url, scene, results = viewer_server
    splats = two_balls()
    save_ply(scene, splats, NORMALIZATION)

    report = render_in_browser(f"{base_url}/index.html?ply=/scene.ply", results, tmp_path)
    assert "error" not in report, f"the viewer page failed: {report['error']}"
    assert report["splats"] == len(splats["means"])
    image = decode_png(report["png"])
    screenshot = tmp_path / "viewer.png"  # kept for a human look
    Image.fromarray(image.astype(np.uint8)).save(screenshot)
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert not two_balls_problems(image), f"{two_balls_problems(image)}; see {screenshot}"
