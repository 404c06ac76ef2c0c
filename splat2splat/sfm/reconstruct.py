"""COLMAP's sparse pipeline through pycolmap: SIFT features, matching, mapping, undistortion to pinhole.

Each pycolmap call runs in a worker thread (pycolmap releases the GIL) while the caller's progress display
follows COLMAP's log file (its "[k/N]" lines; glog writes them with a few seconds' delay) or counts mapped
images. The database itself is never read meanwhile: a reader's lock makes COLMAP's writes abort. Ctrl-C
cancels the call through pycolmap's cancellation token. COLMAP's estimators are seeded, but with several threads
the order of work varies, so reruns can differ slightly (measured: the worst camera's rotation 0.59 vs 0.71
degrees between two runs of the same 36 views); ``--threads 1`` is repeatable.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from splat2splat.errors import InputError

CameraModel = Literal["OPENCV", "SIMPLE_RADIAL", "RADIAL", "PINHOLE", "SIMPLE_PINHOLE", "OPENCV_FISHEYE"]
Matching = Literal["auto", "exhaustive", "sequential"]
Mapper = Literal["incremental", "global"]
EXHAUSTIVE_LIMIT = 150  # "auto" matches photo sets up to this size exhaustively, larger ones sequentially

# report(completed, total): called from the polling loop with the stage's progress
Report = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class SfmSettings:
    camera_model: CameraModel = "OPENCV"
    single_camera: bool = True
    matching: Matching = "auto"
    mapper: Mapper = "incremental"
    max_features: int = 8192
    sequential_overlap: int = 10
    seed: int = 0
    threads: int = -1
    verbose: bool = False


def matching_for(settings: SfmSettings, n_images: int, from_video: bool) -> str:
    """The matching actually run: "auto" is sequential for video frames and for large photo sets."""
    if settings.matching != "auto":
        return settings.matching
    return "sequential" if from_video or n_images > EXHAUSTIVE_LIMIT else "exhaustive"


_COUNTER = re.compile(rb"\[(\d+)/(\d+)(?:, (\d+)/(\d+))?\]")


class ColmapLog:
    """COLMAP's log lines go to ``folder/colmap.log.*`` (and to the terminal only when ``verbose``)."""

    def __init__(self, folder: Path, verbose: bool):
        import pycolmap

        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.start = 0  # where the running stage's lines begin in the newest log file
        log = pycolmap.logging
        log.minloglevel = 0
        log.logtostderr = False
        log.alsologtostderr = verbose
        log.stderrthreshold = 0 if verbose else 3  # COLMAP's lines would bury the progress bars
        log.set_log_destination(log.INFO, str(folder / "colmap.log."))

    def _newest(self) -> Path | None:
        files = sorted(self.folder.glob("colmap.log.*"), key=lambda p: p.stat().st_mtime)
        return files[-1] if files else None

    def mark(self) -> None:
        """A new stage starts: earlier lines (another stage's counters) are ignored from now on."""
        newest = self._newest()
        self.start = newest.stat().st_size if newest else 0

    def counter(self, total: int) -> tuple[int, int]:
        """Progress of the running stage from the last "[k/N]" (or "[i/N, j/N]" block) line of the log."""
        newest = self._newest()
        if newest is None:
            return 0, total
        with open(newest, "rb") as f:
            f.seek(max(self.start, newest.stat().st_size - 4096))
            found = _COUNTER.findall(f.read())
        if not found:
            return 0, total
        k, n, i, m = (int(v) if v else 0 for v in found[-1])
        fraction = ((k - 1) * m + i) / (n * m) if m else k / n
        return min(total, round(fraction * total)), total


def run_stage(work: Callable[..., object], poll: Callable[[], tuple[int, int | None]] | None, report: Report) -> object:
    """Run ``work(cancellation_token=...)`` in a thread, reporting ``poll()`` every 0.2 s; Ctrl-C (or SIGTERM,
    see ``process``) cancels it and waits for it to return.

    The wait is on an Event, not on ``Thread.join``: a KeyboardInterrupt inside ``join`` makes Python 3.11
    consider the thread ended while it still runs, and a pycolmap call still running when the interpreter exits
    aborts the process."""
    import pycolmap

    token = pycolmap.CancellationToken()
    outcome: dict[str, object] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = work(cancellation_token=token)
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error
        finally:
            finished.set()

    threading.Thread(target=target, daemon=True).start()
    try:
        while not finished.wait(0.2):
            if poll is not None:
                report(*poll())
    except KeyboardInterrupt:
        token.cancel()
        finished.wait()
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    if poll is not None:
        report(*poll())
    return outcome.get("value")


def extract_features(database: Path, images: Path, names: list[str], settings: SfmSettings, log: ColmapLog,
                     report: Report) -> None:
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = settings.camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = settings.threads
    extraction.sift.max_num_features = settings.max_features
    mode = pycolmap.CameraMode.SINGLE if settings.single_camera else pycolmap.CameraMode.PER_IMAGE
    log.mark()
    run_stage(lambda cancellation_token: pycolmap.extract_features(
        database, images, image_names=names, camera_mode=mode, reader_options=reader, extraction_options=extraction,
        device=pycolmap.Device.cpu, cancellation_token=cancellation_token),
        lambda: log.counter(len(names)), report)


def match_features(database: Path, method: str, n_images: int, settings: SfmSettings, log: ColmapLog,
                   report: Report) -> None:
    """Match the image pairs of ``method``; progress in images (sequential) or blocks of images (exhaustive)."""
    import pycolmap

    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = settings.threads
    if method == "exhaustive":
        pairing = pycolmap.ExhaustivePairingOptions()
        call = pycolmap.match_exhaustive
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = settings.sequential_overlap
        call = pycolmap.match_sequential
    log.mark()
    run_stage(lambda cancellation_token: call(database, matching_options=matching, pairing_options=pairing,
                                              device=pycolmap.Device.cpu, cancellation_token=cancellation_token),
              lambda: log.counter(n_images), report)


def clear_matches(database: Path) -> None:
    """Remove every match and verified pair from ``database`` (those of an interrupted matching)."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        db.clear_matches()
        db.clear_two_view_geometries()
    finally:
        db.close()


def map_images(database: Path, images: Path, output: Path, n_images: int, settings: SfmSettings, report: Report):
    """Camera poses and points: the largest of the models found (pycolmap.Reconstruction), or None."""
    import pycolmap

    pycolmap.set_random_seed(settings.seed)
    output.mkdir(parents=True, exist_ok=True)
    if settings.mapper == "global":  # pycolmap's global_mapping takes no cancellation token: Ctrl-C waits for it
        options = pycolmap.GlobalPipelineOptions()
        options.random_seed, options.num_threads = settings.seed, settings.threads
        models = run_stage(lambda cancellation_token: pycolmap.global_mapping(database, images, output, options),
                           None, report)
    else:
        options = pycolmap.IncrementalPipelineOptions()
        options.random_seed, options.num_threads = settings.seed, settings.threads
        registered = [0]

        def next_image() -> None:
            registered[0] += 1

        models = run_stage(lambda cancellation_token: pycolmap.incremental_mapping(
            database, images, output, options, next_image_callback=next_image, cancellation_token=cancellation_token),
            lambda: (min(registered[0], n_images), n_images), report)
    if not models:
        return None
    return max(models.values(), key=lambda model: (model.num_reg_images(), model.num_points3D()))


def undistort(model_dir: Path, images: Path, output: Path, report: Report) -> None:
    """Pinhole images and model in ``output/images`` and ``output/sparse`` (COLMAP's image_undistorter)."""
    import pycolmap

    run_stage(lambda cancellation_token: pycolmap.undistort_images(
        output, model_dir, images, output_type="COLMAP", cancellation_token=cancellation_token), None, report)


MIN_POINTS = 20


def check_registration(registered: int, points: int, total: int, method: str, source: Path,
                       min_fraction: float = 0.5) -> None:
    """Refuse a model that holds less than ``min_fraction`` of the views or hardly any points (one line with
    what to try)."""
    hint = "more overlap between neighbouring views (and sharper frames)"
    if method != "exhaustive":
        hint = f"try --matching exhaustive or {hint}"
    else:
        hint = f"try {hint}"
    if registered == 0 or points < MIN_POINTS:
        raise InputError(source, f"no two views could be matched into a model (do the images overlap?); {hint}")
    if registered < min_fraction * total:
        raise InputError(source, f"registered {registered} of {total} views; {hint}")


class StageTimer:
    """Wall time per stage, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)
