"""The one checkpoint format: every checkpoint and ``command.json`` is written and read here.

A checkpoint (``.pt`` / ``.ckpt``) is a dict of plain values and tensors, loaded with
``torch.load(weights_only=True)`` so a file from someone else can never run code::

    {"format": 1,                          # FORMAT_VERSION; an unknown version is refused
     "backend": "gaussian" | "nerf",       # which registered SceneBackend wrote it
     "backend_state": backend.state_dict(),
     "data": "path/to/dataset",            # the dataset it was trained on (default for --data)
     "downscale": 2,                       # the image downscale it was trained at (default for --downscale)
     "rng": {...},                         # global torch RNG states (gsplat's strategies draw from them)
     ...}                                  # what the writing loop needs to resume (command, IDU state, edits)

``command.json`` beside it holds the job that started a run, so ``--resume`` rebuilds exactly that job: its
options, with the scene backend's name under "backend" and that backend's settings under "scene" (files of
earlier versions held both backends' settings under "gaussians" and "nerf"; they still resume).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch

from splat2splat.backends import BACKENDS, backend_from_state, backend_kind
from splat2splat.configs import config_from_dict, config_to_dict
from splat2splat.errors import InputError
from splat2splat.io import read_json, save_torch, write_json
from splat2splat.scene import SceneBackend

FORMAT_VERSION = 1  # bumped whenever the layout above changes
CHECKPOINT_SUFFIXES = (".pt", ".ckpt")
CHECKPOINT_FILE = "checkpoint.pt"  # the name every run folder gives its checkpoint
COMMAND_FILE = "command.json"
# Options that older splat2splat versions saved with a run but that belong to one invocation only.
PER_INVOCATION_KEYS = ("resume", "viewer", "viewer_port", "viewer_every")

Job = TypeVar("Job")


# ------------------------------------------------------------------------------------------------ writing


def rng_state() -> dict:
    """The global torch RNG states: gsplat's strategies draw from them (split positions, relocation)."""
    state = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, backend: SceneBackend, data: Path | None, downscale: int, **extra: Any) -> None:
    """Write the checkpoint of ``backend`` atomically; ``extra`` holds what the writing loop resumes from."""
    save_torch(path, {"format": FORMAT_VERSION, "backend": backend.name, "backend_state": backend.state_dict(),
                      "data": str(data), "downscale": downscale, "rng": rng_state(), **extra})


def job_to_dict(job: Any) -> dict:
    """A train or edit job as plain values: its options, its backend's name and that backend's settings."""
    return {**config_to_dict(job), "backend": job.backend}


def write_command(folder: Path, job: Any) -> None:
    """Record the job that starts a run in ``folder/command.json``."""
    write_json(Path(folder) / COMMAND_FILE, job_to_dict(job))


# ------------------------------------------------------------------------------------------------ schema
# What every reader (resume, export, render) takes from a checkpoint, declared once and checked before any of
# it is used: a damaged file is one line naming the file and the field, never a traceback later on.

MAX_NESTING = 32  # far deeper than anything written here (optimizer states nest 4 levels)
MAX_STEPS = 2**40
MAX_VIEWS = 2**24
GENERATOR_BYTES = torch.Generator().get_state().numel()  # torch's CPU generator (mt19937) state


class SchemaError(ValueError):
    """A field of a checkpoint that is not what the schema declares."""

    def __init__(self, where: str, problem: str):
        where = where if len(where) <= 200 else f"{where[:200]}..."  # key names come from the file
        super().__init__(f"'{where}' {problem}")


@dataclass(frozen=True)
class Whole:
    low: int = 0
    high: int = MAX_STEPS

    def check(self, value: Any, where: str) -> None:
        if type(value) is not int:
            raise SchemaError(where, f"must be a whole number, found {describe(value)}")
        if not self.low <= value <= self.high:
            raise SchemaError(where, f"must be from {self.low} to {self.high}, found {value}")


@dataclass(frozen=True)
class Number:
    low: float = float("-inf")

    def check(self, value: Any, where: str) -> None:
        if type(value) not in (int, float) or value != value or abs(value) == float("inf") or value < self.low:
            raise SchemaError(where, f"must be a finite number >= {self.low}, found {describe(value)}")


@dataclass(frozen=True)
class Text:
    choices: tuple[str, ...] = ()

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, str) or (self.choices and value not in self.choices):
            wanted = f"one of {', '.join(self.choices)}" if self.choices else "a string"
            raise SchemaError(where, f"must be {wanted}, found {describe(value)}")


@dataclass(frozen=True)
class Flag:
    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, bool):
            raise SchemaError(where, f"must be true or false, found {describe(value)}")


@dataclass(frozen=True)
class Tensor:
    """A tensor of one of ``dtypes``; ``shape``: its sizes (None: any), ``finite``: no NaN or infinity."""

    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    shape: tuple[int | None, ...] | None = None
    finite: bool = False
    min_rows: int = 0

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, torch.Tensor):
            raise SchemaError(where, f"must be a tensor, found {describe(value)}")
        if value.dtype not in self.dtypes:
            raise SchemaError(where, f"must be {' or '.join(str(d).removeprefix('torch.') for d in self.dtypes)}, "
                                     f"found {str(value.dtype).removeprefix('torch.')}")
        if self.shape is not None and (value.dim() != len(self.shape) or any(
                want is not None and got != want for got, want in zip(value.shape, self.shape))):
            wanted = ["*" if size is None else size for size in self.shape]
            raise SchemaError(where, f"must have shape {wanted}, found {list(value.shape)}")
        if value.dim() and len(value) < self.min_rows:
            raise SchemaError(where, f"must have at least {self.min_rows} rows, found {len(value)}")
        if self.finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise SchemaError(where, "holds NaN or infinite values")


@dataclass(frozen=True)
class Items:
    item: Any
    length: int | None = None
    nonempty: bool = False

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(where, f"must be a list, found {describe(value)}")
        if (self.length is not None and len(value) != self.length) or (self.nonempty and not value):
            raise SchemaError(where, f"must have {self.length or 'at least 1'} items, found {len(value)}")
        for k, item in enumerate(value):
            self.item.check(item, f"{where}[{k}]")


@dataclass(frozen=True)
class Mapping:
    """A dict with any keys and values of one kind."""

    value: Any = None  # None: anything (only its nesting depth is checked)

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise SchemaError(where, f"must be a dict, found {describe(value)}")
        if self.value is not None:
            for key, item in value.items():
                self.value.check(item, f"{where}.{key}")


@dataclass(frozen=True)
class Fields:
    """A dict with these ``required`` and ``optional`` keys (others are allowed and ignored)."""

    required: dict[str, Any]
    optional: dict[str, Any] = field(default_factory=dict)

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise SchemaError(where, f"must be a dict, found {describe(value)}")
        for key, spec in self.required.items():
            if key not in value:
                raise SchemaError(f"{where}.{key}", "is missing")
            spec.check(value[key], f"{where}.{key}")
        for key, spec in self.optional.items():
            if key in value:
                spec.check(value[key], f"{where}.{key}")


@dataclass(frozen=True)
class OneOf:
    values: tuple

    def check(self, value: Any, where: str) -> None:
        if not any(type(value) is type(v) and value == v for v in self.values):
            raise SchemaError(where, f"must be one of {', '.join(map(repr, self.values))}, found {describe(value)}")


@dataclass(frozen=True)
class Maybe:
    inner: Any

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.inner.check(value, where)


@dataclass(frozen=True)
class Related:
    """A schema plus a check of how its fields relate (run after the schema holds)."""

    schema: Any
    relations: Any

    def check(self, value: Any, where: str) -> None:
        self.schema.check(value, where)
        self.relations(value)


GENERATOR = Tensor((torch.uint8,), (GENERATOR_BYTES,))
BACKGROUND = Items(Number(), length=3)
MAX_PARAMETERS = 1 << 16  # far more parameter tensors than any optimizer here holds


def adam_schema(groups: int, moments: tuple[torch.dtype, ...] = (torch.float32,)) -> Fields:
    """Adam's state dict as this program creates it: ``groups`` parameter groups, moments of ``moments``."""
    return Fields({"state": Mapping(Fields({"exp_avg": Tensor(moments, finite=True),
                                            "exp_avg_sq": Tensor(moments, finite=True)},
                                           {"step": Tensor(shape=())})),
                   # Adam's settings (a group overrides them when loaded)
                   "param_groups": Items(Fields({"lr": Number(low=0.0), "betas": Items(Number(low=0.0), length=2),
                                                 "eps": Number(low=0.0), "weight_decay": Number(low=0.0),
                                                 "params": Items(Whole(0, MAX_PARAMETERS))},
                                                {"amsgrad": Flag(), "maximize": Flag(), "foreach": Maybe(Flag()),
                                                 "capturable": OneOf((False,)), "differentiable": OneOf((False,)),
                                                 "fused": Maybe(Flag()),  # fused on the CPU
                                                 "decoupled_weight_decay": Flag(),
                                                 "initial_lr": Number(low=0.0)}), length=groups)})


ADAM = adam_schema(groups=1)
SPLAT_SHAPES = {"means": (None, 3), "scales": (None, 3), "quats": (None, 4), "opacities": (None,),
                "sh0": (None, 1, 3), "shN": (None, None, 3)}
SH_REST_WIDTHS = (0, 3, 8, 15)  # shN rows of SH degrees 0-3
PER_GAUSSIAN = Maybe(Tensor(shape=(None,), finite=True))
STRATEGY_STATE = Fields({}, {"grad2d": PER_GAUSSIAN, "count": PER_GAUSSIAN, "radii": PER_GAUSSIAN,
                             "scene_scale": Number(low=0.0), "binoms": Tensor(shape=(None, None))})
STRATEGY_STATE_KEYS = {"default": ("grad2d", "count", "scene_scale"), "mcmc": ("binoms",)}  # what gsplat reads
BACKEND_SCHEMAS = {
    "gaussian": Related(Fields(
        {"config": Mapping(), "step": Whole(), "background": BACKGROUND,
         "splats": Fields({key: Tensor(shape=shape, finite=True, min_rows=1) for key, shape in SPLAT_SHAPES.items()}),
         "optimizers": Fields({key: ADAM for key in SPLAT_SHAPES})},
        {"strategy_state": Maybe(STRATEGY_STATE), "generator": GENERATOR, "view_order": Items(Whole(0, MAX_VIEWS)),
         "density_control": Text(), "frozen": Maybe(Tensor((torch.bool,), (None,)))}),
        lambda state: check_gaussian_state(state)),  # defined below
    "nerf": Fields(
        {"config": Mapping(), "step": Whole(), "background": BACKGROUND,
         "train_indices": Items(Whole(0, MAX_VIEWS), nonempty=True),
         "field": Mapping(Tensor((torch.float32, torch.float16), finite=True)),
         "optimizer": adam_schema(groups=2, moments=(torch.float32, torch.float16)),
         "occupancy": Fields({"density": Tensor(shape=(None, None, None), finite=True),
                              "occupied": Tensor((torch.bool,), (None, None, None))})},
        {"generator": GENERATOR}),
}
TOP_SCHEMA = Fields({"rng": Fields({"cpu": GENERATOR}, {"cuda": Items(Tensor((torch.uint8,), (None,)))})},
                    {"data": Text(), "downscale": Whole(1, 1 << 16), "command": Mapping()})
IMAGE = Tensor(shape=(None, None, 3), finite=True)
EDIT_SCHEMA = Fields({
    "idu": Fields({"step": Whole(), "edits_done": Whole(), "next_in_order": Whole(0, MAX_VIEWS),
                   "edit_order": Items(Whole(0, MAX_VIEWS), nonempty=True), "generator": GENERATOR,
                   "seconds": Mapping(Number(low=0.0))},
                  {"updating": Flag(), "region_masks": Items(Tensor((torch.float32, torch.bool), (None, None))),
                   "pending_edits": Items(Fields({"due": Whole(), "views": Items(Whole(0, MAX_VIEWS), nonempty=True),
                                                  "images": Items(IMAGE, nonempty=True)}))}),
    "dataset_edits": Fields({"current": Items(IMAGE), "edit_counts": Items(Whole())}),
})


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether containers nest deeper than ``limit`` in ``value`` (iterative: any depth is safe to ask)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def check_schema(path: Path, schema: Any, value: Any, where: str) -> None:
    try:
        schema.check(value, where)
    except SchemaError as problem:
        raise InputError(path, f"damaged checkpoint: {problem}") from None


def check_gaussian_state(state: dict) -> None:
    """What the schema cannot say alone: optimizer moments shaped like their Gaussians, an SH width of a degree."""
    splats = state["splats"]
    if splats["shN"].shape[1] not in SH_REST_WIDTHS:
        raise SchemaError("backend_state.splats.shN", f"must have {', '.join(map(str, SH_REST_WIDTHS))} SH rows "
                                                      f"(degree 0-3), found {splats['shN'].shape[1]}")
    for key, optimizer in state["optimizers"].items():
        for slot in optimizer["state"].values():
            for moment in ("exp_avg", "exp_avg_sq"):
                if key in splats and slot[moment].shape != splats[key].shape:
                    raise SchemaError(f"backend_state.optimizers.{key}.{moment}", f"has shape "
                                      f"{list(slot[moment].shape)}, its Gaussians {list(splats[key].shape)}")
    strategy = state["config"].get("strategy")
    kind = strategy.get("kind", "default") if isinstance(strategy, dict) else None
    strategy_state = state.get("strategy_state") or {}
    needed = STRATEGY_STATE_KEYS.get(kind, ())
    if any(key not in strategy_state for key in needed):
        raise SchemaError("backend_state.strategy_state", f"must hold {', '.join(needed)} for the {kind} strategy")
    for key in ("grad2d", "count", "radii"):
        if strategy_state.get(key) is not None and len(strategy_state[key]) != len(splats["means"]):
            raise SchemaError(f"backend_state.strategy_state.{key}", f"has {len(strategy_state[key])} rows for "
                                                                     f"{len(splats['means'])} Gaussians")
    frozen = state.get("frozen")
    if frozen is not None and len(frozen) != len(splats["means"]):
        raise SchemaError("backend_state.frozen", f"has {len(frozen)} rows for {len(splats['means'])} Gaussians")


def check_edit_state(path: Path, checkpoint: dict, train_indices: list[int]) -> None:
    """The edit's own part of a checkpoint (IDU state, edited images) against the schema and the dataset's
    training views; every problem is an InputError naming ``path`` and the field."""
    check_schema(path, EDIT_SCHEMA, checkpoint, "checkpoint")
    idu, views = checkpoint["idu"], set(train_indices)
    try:
        for k, view in enumerate(idu["edit_order"]):
            if view not in views:
                raise SchemaError(f"idu.edit_order[{k}]", f"is view {view}, not a training view of the dataset")
        if idu["next_in_order"] >= len(idu["edit_order"]):
            raise SchemaError("idu.next_in_order", f"is {idu['next_in_order']}, past the {len(idu['edit_order'])} "
                                                   f"views of edit_order")
        for k, entry in enumerate(idu.get("pending_edits", [])):
            if len(entry["views"]) != len(entry["images"]) or not set(entry["views"]) <= views:
                raise SchemaError(f"idu.pending_edits[{k}]", "does not hold one image per training view")
    except SchemaError as problem:
        raise InputError(path, f"damaged checkpoint: {problem}") from None


# ------------------------------------------------------------------------------------------------ reading


def load_checkpoint_file(path: Path) -> Any:
    """``torch.load`` that never unpickles code: only tensors and plain containers load."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or code-carrying archive
        text = " ".join(str(exc).split())
        if text.startswith("Weights only load failed"):  # torch's advice to load it unsafely is not repeated
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise InputError(path, f"refused: not a splat2splat checkpoint, it holds Python objects{what} that "
                                   f"could run code when loaded; checkpoints are only ever read as tensors and "
                                   f"plain values") from None
        raise InputError(path, f"not a readable splat2splat checkpoint ({type(exc).__name__}: {text[:200]})") from None


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint and check its layout; every problem is an InputError naming ``path``."""
    path = Path(path)
    checkpoint = load_checkpoint_file(path)
    if too_deep(checkpoint):
        raise InputError(path, f"damaged checkpoint: containers nest deeper than {MAX_NESTING} levels")
    if not isinstance(checkpoint, dict):
        raise InputError(path, f"not a splat2splat checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    version = checkpoint.get("format")
    if type(version) is not int or version != FORMAT_VERSION:
        raise InputError(path, f"checkpoint format {describe(version)} is not the format {FORMAT_VERSION} this "
                               f"splat2splat reads (written by another version or another program)")
    kind = checkpoint.get("backend")
    if not isinstance(kind, str) or kind not in BACKENDS:
        raise InputError(path, f"not a splat2splat checkpoint: 'backend' must be one of {', '.join(BACKENDS)}, "
                               f"found {describe(kind)}")
    state = checkpoint.get("backend_state")
    if not isinstance(state, dict):
        raise InputError(path, f"checkpoint has no 'backend_state' dict (found {describe(state)})")
    try:
        BACKENDS[kind].backend_class.check_state(state)
    except ValueError as problem:
        raise InputError(path, f"the {kind} scene in this checkpoint is damaged or from another program: "
                               f"{problem}") from None
    check_schema(path, BACKEND_SCHEMAS[kind], state, "backend_state")
    if "data" in checkpoint and not isinstance(checkpoint["data"], str):
        raise InputError(path, f"checkpoint 'data' must be a dataset path, found {describe(checkpoint['data'])}")
    downscale = checkpoint.get("downscale", 1)
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise InputError(path, f"checkpoint 'downscale' must be a whole number >= 1, found {describe(downscale)}")
    check_schema(path, TOP_SCHEMA, checkpoint, "checkpoint")
    return checkpoint


def backend_from_checkpoint(path: Path, checkpoint: dict, device: str | None = None) -> SceneBackend:
    """The backend a :func:`read_checkpoint` result describes (``device``: override the saved device)."""
    kind = checkpoint["backend"]
    try:
        return backend_from_state(kind, checkpoint["backend_state"], device)
    except InputError as error:  # e.g. a CUDA device asked for on a machine without one, or a bad saved setting
        if error.path is not None:
            raise
        raise InputError(path, error.problem) from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        cause = " ".join(str(error).split())[:300]
        raise InputError(path, f"checkpoint does not hold a loadable {kind} scene "
                               f"({type(error).__name__}: {cause})") from None


def require_keys(path: Path, checkpoint: dict, keys: tuple[str, ...], written_by: str) -> None:
    """A checkpoint to resume must come from the loop that resumes it."""
    missing = [key for key in keys if key not in checkpoint]
    if missing:
        raise InputError(path, f"not a checkpoint of {written_by} (it lacks {', '.join(missing)}); nothing to resume")


def job_from_dict(cls: type[Job], values: Any, source: Path) -> Job:
    """A saved job (checkpoint 'command' or command.json) as ``cls``; bad content is one InputError."""
    if not isinstance(values, dict):
        raise InputError(source, f"the saved command must be a JSON object, found {describe(values)}")
    values = {key: value for key, value in values.items() if key not in PER_INVOCATION_KEYS}
    if "scene" not in {f.name for f in dataclasses.fields(cls)}:  # a part of a job (the evaluation reads some)
        return config_from_dict(cls, values, source)
    name = values.pop("backend", "gaussian")
    if not isinstance(name, str) or name not in BACKENDS:
        raise InputError(source, f"the saved command's backend must be one of {', '.join(BACKENDS)}, "
                                 f"found {describe(name)}")
    kind = backend_kind(name)
    if "scene" not in values:  # written before a job held one backend's settings: both were saved
        values["scene"] = values.get(kind.option_prefix, {})
        for kind_of_old in BACKENDS.values():
            values.pop(kind_of_old.option_prefix, None)
    scene = config_from_dict(kind.config_class, values.pop("scene"), source, f"{cls.__name__}.{kind.option_prefix}")
    return dataclasses.replace(config_from_dict(cls, values, source), scene=scene)


# Settings that widen what a run may read: a resume takes them only from its own command line, never from a
# saved command (a run folder from elsewhere must not grant itself access to files outside its dataset).
PERMISSION_FIELDS = {"allow_paths_outside_data": "--allow-paths-outside-data"}


def with_invocation_permissions(saved: Job, invocation: Any, source: Path) -> Job:
    """``saved`` (a job read from ``source``) with the permissions of ``invocation`` (this command line); a
    permission the saved job had but the command line does not give is refused in one line."""
    for name, option in PERMISSION_FIELDS.items():
        if getattr(saved, name) and not getattr(invocation, name):
            raise InputError(source, f"this run was started with {option}; a resume never takes that permission "
                                     f"from a file: pass {option} again to continue it")
    return dataclasses.replace(saved, **{name: getattr(invocation, name) for name in PERMISSION_FIELDS})


# What a resumed run takes from its command line (the rest is the saved run's): more steps, where and how often
# it saves, the outputs still to come, and where this machine keeps the models. Options use dotted field names.
RESUME_OPTIONS = ("idu.steps", "steps", "turntable_frames", "video_format", "checkpoint_every", "checkpoint_minutes",
                  "eval_every", "device", "model", "lpips_weights", "max_file_gaussians")
NOT_RESUME_OPTIONS = ("output", *PERMISSION_FIELDS)  # the run folder itself; permissions (see above)


def flat_options(values: dict, prefix: str = "") -> dict[str, Any]:
    """A nested options dict as dotted names -> values."""
    items: dict[str, Any] = {}
    for key, value in values.items():
        items.update(flat_options(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return items


def typed_options(args: Sequence[str]) -> set[str]:
    """The dotted field names of the options in ``args`` (a command line): ``--idu.editor.guidance-scale 9`` ->
    ``idu.editor.guidance_scale``, a backend's ``--gaussians.*`` / ``--nerf.*`` -> ``scene.*``; a ``--no-x`` flag
    names ``x`` (and ``no_x``, in case a field is called that)."""
    prefixes = {kind.option_prefix: "scene" for kind in BACKENDS.values()}
    names = set()
    for token in args:
        if not token.startswith("--") or token == "--":
            continue
        *parents, last = token[2:].split("=", 1)[0].replace("-", "_").split(".")
        if parents and parents[0] in prefixes:
            parents[0] = prefixes[parents[0]]
        names |= {".".join([*parents, last]), ".".join([*parents, last.removeprefix("no_")])}
    return names


def given_options(invocation: Any, default: Any, command_line: Sequence[str] = ()) -> dict[str, Any]:
    """The options of ``invocation`` that differ from ``default`` or are named on ``command_line`` (an option
    typed with its default value was given too), dotted names, without the run folder and the permissions
    (handled on their own)."""
    now, before = flat_options(config_to_dict(invocation)), flat_options(config_to_dict(default))
    typed = typed_options(command_line)
    return {key: value for key, value in now.items()
            if (before.get(key) != value or key in typed) and key not in NOT_RESUME_OPTIONS}


def with_resume_options(saved: Job, given: dict[str, Any], source: Path) -> Job:
    """``saved`` with the options of :data:`RESUME_OPTIONS` in ``given`` (this command line); any other given
    option is refused in one line unless it repeats the saved run's value, since the saved run keeps it."""
    kept = flat_options(config_to_dict(saved))
    refused = sorted(key for key in given if key not in RESUME_OPTIONS and (key not in kept or kept[key] != given[key]))
    if refused:
        prefix = backend_kind(saved.backend).option_prefix  # a job's scene options are spelled --gaussians.*
        names = ", ".join("--" + re.sub(r"^scene\.", f"{prefix}.", key).replace("_", "-") for key in refused)
        raise InputError(source, f"--resume continues the saved run, which keeps {names}; a resume may change only "
                                 f"{', '.join('--' + k.replace('_', '-') for k in RESUME_OPTIONS)} (start a new "
                                 f"--output for other settings)")
    values = config_to_dict(saved)
    for key, value in given.items():
        node = values
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return config_from_dict(type(saved), values, source)


def read_command(folder: Path, cls: type[Job]) -> Job:
    """The job recorded in ``folder/command.json``."""
    path = Path(folder) / COMMAND_FILE
    return job_from_dict(cls, read_json(path), path)


def job_fields(job: Any, cls: type[Job]) -> Job:
    """``job`` (a command: the job plus per-invocation options) reduced to the library job ``cls``."""
    return cls(**{f.name: getattr(job, f.name) for f in dataclasses.fields(cls)})


def describe(value: object) -> str:
    """A short description of a value from a file (never a repr of a container, which may nest very deep)."""
    if isinstance(value, (dict, list, tuple, set)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"
