"""Device mesh, logical-axis rules and shardings: where params, optimizer state and batches live.

The model names every parameter dimension by a logical axis (`embed`, `mlp`, `heads`, ...) and
never mentions devices; a rules table (t5x style) maps those names onto the mesh axes `data`,
`fsdp` and `model`, so one model runs data-parallel, FSDP, tensor-parallel or 2-D by changing
a gin file, not code. Sharding is pjit-style: `jax.jit` in/out shardings over a `Mesh` with
`Auto` axes, leaving activations to XLA's propagation.

The axes live in the params' `logical_axes` metadata, not Flax NNX's `sharding_names`: NNX acts
on the latter eagerly (it shards at creation and needs a mesh in context), while we want the
model built abstractly and placed by whichever rules and mesh the run chooses.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None
LogicalRules = Sequence[tuple[str, MeshAxes]]
AnyMesh = Mesh | jax.sharding.AbstractMesh

MESH_AXES = ("data", "fsdp", "model")
DCN_AXES = ("dcn_data", "dcn_fsdp", "dcn_model")

# First matching rule whose mesh axes are still free in the spec and divide the dimension wins;
# a name with no usable rule is replicated. `model` is the innermost (fastest-linked) mesh axis.
DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("layers", None),
    ("connector_tokens", None),
    ("lora_rank", None),  # LoRA adapters (model.lora): rank is small, the other dim shards
    ("prompt", None),  # a soft prompt's positions (model.prompt): few; its embed dim shards
)

logger = logging.getLogger(__name__)
_logged_fallbacks: set[str] = set()


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; one of them may be -1, meaning "all the devices the others leave".

    `data` splits the batch, `fsdp` splits the batch and shards params / optimizer state
    (ZeRO-3), `model` splits heads, mlp and vocab (tensor parallelism).

    Across slices (TPU multislice) or hosts (GPUs), `dcn_data` / `dcn_fsdp` / `dcn_model`
    say how many slices each axis spans over the slower data-center network (DCN); the plain
    sizes are then per slice, so an axis is `data * dcn_data` devices long. One dcn size may
    be -1 ("all the slices the others leave"). A slice is a TPU slice where devices have a
    `slice_index`, else one process (host).
    """

    data: int = -1
    fsdp: int = 1
    model: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_model: int = 1

    def __post_init__(self) -> None:
        for group in (MESH_AXES, DCN_AXES):
            for name in group:
                size = getattr(self, name)
                if not isinstance(size, int) or (size < 1 and size != -1):
                    raise ValueError(f"MeshConfig.{name}={size!r}: expected a positive int "
                                     "or -1")
            rest = [name for name in group if getattr(self, name) == -1]
            if len(rest) > 1:
                raise ValueError(f"{self._describe()}: only one axis may be -1, got {rest}")

    @property
    def multislice(self) -> bool:
        return any(getattr(self, name) != 1 for name in DCN_AXES)

    def dcn_shape(self, num_slices: int) -> tuple[int, int, int]:
        """(dcn_data, dcn_fsdp, dcn_model) for `num_slices` slices, the -1 filled in."""
        return _fill([getattr(self, n) for n in DCN_AXES], num_slices,
                     f"{self._describe()}", "slices")

    def ici_shape(self, devices_per_slice: int) -> tuple[int, int, int]:
        """(data, fsdp, model) inside one slice, the -1 filled in."""
        return _fill([getattr(self, n) for n in MESH_AXES], devices_per_slice,
                     f"{self._describe()}", "devices")

    def shape(self, num_devices: int, num_slices: int = 1) -> tuple[int, int, int]:
        """(data, fsdp, model) sizes of the whole mesh for `num_devices` in `num_slices`."""
        if num_devices % num_slices:
            raise ValueError(f"{num_devices} devices do not split into {num_slices} slices")
        dcn = self.dcn_shape(num_slices)
        ici = self.ici_shape(num_devices // num_slices)
        return tuple(i * d for i, d in zip(ici, dcn))

    def _describe(self) -> str:
        text = "mesh " + " x ".join(f"{name}={getattr(self, name)}" for name in MESH_AXES)
        if self.multislice:
            text += " per slice, " + " x ".join(
                f"{name}={getattr(self, name)}" for name in DCN_AXES)
        return text


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, model) mesh over `devices` (default: all, every process), ordered for
    the interconnect by `jax.make_mesh`. Axes are `Auto`: recent jax (0.10 here) defaults to
    `Explicit`, which makes every op's sharding part of its type instead of letting XLA
    propagate from the jit's in/out shardings."""
    devices = list(jax.devices() if devices is None else devices)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if not cfg.multislice:
        return jax.make_mesh(cfg.shape(len(devices)), MESH_AXES, axis_types=axis_types,
                             devices=devices)
    from jax.experimental import mesh_utils

    # Slices are TPU slices where the runtime says so, else processes (GPU hosts, CPU tests).
    per_process = not hasattr(devices[0], "slice_index")
    granule = (lambda d: d.process_index) if per_process else (lambda d: d.slice_index)
    num_slices = len({granule(d) for d in devices})
    dcn = cfg.dcn_shape(num_slices)
    ici = cfg.ici_shape(len(devices) // num_slices)
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                process_is_granule=per_process)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


@gin.configurable
def logical_axis_rules(rules: LogicalRules = DEFAULT_RULES) -> tuple[tuple[str, MeshAxes], ...]:
    """The rules table gin binds (`logical_axis_rules.rules = [...]`), checked and as tuples."""
    out = []
    for entry in rules:
        if len(entry) != 2 or not isinstance(entry[0], str):
            raise ValueError(f"logical axis rule {entry!r}: expected (logical_name, mesh_axes)")
        name, axes = entry
        if axes is not None and not isinstance(axes, str):
            axes = tuple(axes)
            if not all(isinstance(a, str) for a in axes):
                raise ValueError(f"logical axis rule {entry!r}: mesh axes must be names")
        out.append((name, axes))
    return tuple(out)


def logical_to_spec(axes: Sequence[str | None], rules: LogicalRules, mesh: AnyMesh,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
    """Logical axis names (one per dimension) -> PartitionSpec over `mesh`.

    Dimensions are resolved left to right; a mesh axis is used at most once per spec; size-1
    mesh axes are left out. With `shape`, a dimension whose size the mesh axes don't divide
    tries the name's next rule and is replicated if none fits (see `param_shardings`).
    Only the mesh's axis sizes are read, so an `AbstractMesh` will do.
    """
    spec, _ = _resolve(tuple(axes), rules, mesh, None if shape is None else tuple(shape))
    return spec


def param_shardings(abstract_params: Any, axes_tree: Any, rules: LogicalRules,
                    mesh: AnyMesh) -> Any:
    """Tree of NamedSharding shaped like `abstract_params` (arrays or ShapeDtypeStructs).

    `axes_tree` is `flan_jax.model.param_axes(model)`. Dimensions that can't be split evenly
    (e.g. 6 heads over model=4) are replicated instead of failing: params can't be padded,
    and the rest of the param is still sharded. Which params fell back is logged once.
    """
    fallbacks: dict[str, list[str]] = {}

    def one(path, leaf, axes):
        spec, fell_back = _resolve(tuple(axes), rules, mesh, tuple(leaf.shape))
        for what in fell_back:
            fallbacks.setdefault(what, []).append(path_str(path))
        return NamedSharding(mesh, spec)

    out = jax.tree_util.tree_map_with_path(one, abstract_params, axes_tree)
    if fallbacks:
        _log_once(f"mesh {dict(mesh.shape)} does not divide these param dimensions, so they "
                  "are replicated: " + "; ".join(
                      f"{what} in {len(paths)} param(s): {', '.join(paths[:3])}"
                      + (", ..." if len(paths) > 3 else "") for what, paths in fallbacks.items()),
                  detail=fallbacks)
    return out


def shard_params(params: Any, shardings: Any) -> Any:
    """Places `params` (host or device arrays, the same values on every process)."""
    return jax.device_put(params, shardings)


def replicated(mesh: AnyMesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: AnyMesh, rules: LogicalRules, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, length, ...] feature. Not shape-aware on purpose: a batch that
    doesn't split over the data axes is an error (see `global_batch`), never silently replicated."""
    axes = ("batch", "length", *([None] * (ndim - 2)))[:ndim]
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh))


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh,
                 rules: LogicalRules) -> dict[str, jax.Array]:
    """This process's rows of every feature -> global arrays sharded by `batch_sharding`.

    Each process passes the rows its own devices hold (what the per-host data pipeline
    yields); processes that share batch shards (model axis across hosts) pass the same rows.
    """
    out = {}
    for name, x in local_batch.items():
        x = np.asarray(x)
        sharding = batch_sharding(mesh, rules, x.ndim)
        shards = _local_batch_shards(mesh, sharding.spec[0])
        if x.shape[0] % shards:
            raise ValueError(f"global_batch: feature {name!r} has {x.shape[0]} local rows, "
                             f"which do not split over this process's {shards} batch shards "
                             f"(mesh axes {sharding.spec[0]!r} of {dict(mesh.shape)})")
        out[name] = jax.make_array_from_process_local_data(sharding, x)
    return out


def optimizer_state_shardings(abstract_state: Any, abstract_params: Any,
                              param_shardings_tree: Any) -> Any:
    """Shardings for an optax state (from `jax.eval_shape(optimizer.init, params)`).

    The rule: any subtree of the state with the params' tree structure mirrors the params
    leaf for leaf (Adam's mu / nu, Adafactor's v / v_row / v_col). A mirrored leaf of the
    param's shape takes the param's sharding; one whose shape is the param's with dimensions
    removed (Adafactor's factored moments) keeps the mesh axes of the surviving dimensions;
    anything else (step counts, Adafactor's (1,) placeholders, optax.masked leaves) is
    replicated. If several removals give the same shape (equal dims), a surviving dimension
    keeps its axis only where every reading agrees. Failing that, a leaf dimension may be a
    run of adjacent param dimensions merged (state of a param the optimizer sees reshaped,
    e.g. [embed, heads * kv] from `optim.factor_like_t5x`): it takes the run's outer axis
    when the inner dimensions are unsharded (each device then holds one contiguous block),
    else is replicated.
    """
    params_def = jax.tree.structure(abstract_params)
    params_flat = params_def.flatten_up_to(abstract_params)
    shardings_flat = params_def.flatten_up_to(param_shardings_tree)
    mesh = shardings_flat[0].mesh

    def mirrored(leaf, param, sharding):
        spec = _reduced_spec(tuple(leaf.shape), tuple(param.shape),
                             _padded(sharding.spec, len(param.shape)))
        return NamedSharding(mesh, spec)

    def assign(node):
        if _is_mirror(node, params_def):
            leaves = params_def.flatten_up_to(node)
            return params_def.unflatten(
                [mirrored(*z) for z in zip(leaves, params_flat, shardings_flat)])
        return replicated(mesh)

    return jax.tree.map(assign, abstract_state, is_leaf=lambda n: _is_mirror(n, params_def))


# --- helpers -----------------------------------------------------------------------------


def _resolve(axes: tuple[str | None, ...], rules: LogicalRules, mesh: AnyMesh,
             shape: tuple[int, ...] | None) -> tuple[PartitionSpec, list[str]]:
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"logical axes {axes} do not match shape {shape}")
    sizes = dict(mesh.shape)
    used: set[str] = set()
    spec, fallbacks = [], []
    for dim, name in enumerate(axes):
        if name is None:
            spec.append(None)
            continue
        candidates = [mesh_axes for rule_name, mesh_axes in rules if rule_name == name]
        if not candidates:
            raise ValueError(f"logical axis {name!r} has no rule; add e.g. ({name!r}, None) "
                             "to the logical_axis_rules")
        chosen, undivided = None, None
        for mesh_axes in candidates:
            names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
            for a in names:
                if a not in sizes:
                    raise ValueError(f"logical axis rule ({name!r}, {mesh_axes!r}) names mesh "
                                     f"axis {a!r}, not in mesh {dict(sizes)}")
            names = tuple(a for a in names if sizes[a] > 1)
            if used & set(names):
                continue
            ways = math.prod(sizes[a] for a in names)
            if shape is not None and shape[dim] % ways:
                undivided = undivided or f"{name}={shape[dim]} over {'x'.join(names)}={ways}"
                continue
            chosen = names
            break
        if not chosen and undivided:
            fallbacks.append(undivided)
        used.update(chosen or ())
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
    return PartitionSpec(*spec), fallbacks


def _fill(sizes: list[int], total: int, what: str, unit: str) -> tuple[int, ...]:
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if total % fixed:
            raise ValueError(f"{what}: the fixed axes ({fixed} {unit}) do not divide the "
                             f"{total} {unit}")
        sizes[sizes.index(-1)] = total // fixed
    elif fixed != total:
        raise ValueError(f"{what} needs {fixed} {unit}, have {total}")
    return tuple(sizes)


def _log_once(message: str, detail: Mapping[str, list[str]]) -> None:
    if message in _logged_fallbacks:
        return
    _logged_fallbacks.add(message)
    logger.warning(message)
    for what, paths in detail.items():
        logger.debug("%s: %s", what, ", ".join(paths))


def _local_batch_shards(mesh: Mesh, batch_axes: MeshAxes) -> int:
    """How many distinct slices of the batch this process's devices hold."""
    names = () if batch_axes is None else (
        (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes))
    if not names:
        return 1
    index = {d: i for i, d in np.ndenumerate(mesh.devices)}
    dims = [mesh.axis_names.index(a) for a in names]
    local = [index[d] for d in mesh.local_devices]
    return len({tuple(i[k] for k in dims) for i in local})


def _is_mirror(node: Any, params_def: jax.tree_util.PyTreeDef) -> bool:
    return jax.tree.structure(node) == params_def


def _padded(spec: PartitionSpec, ndim: int) -> tuple[MeshAxes, ...]:
    return tuple(spec) + (None,) * (ndim - len(spec))


def _reduced_spec(leaf_shape: tuple[int, ...], param_shape: tuple[int, ...],
                  param_spec: tuple[MeshAxes, ...]) -> PartitionSpec:
    if leaf_shape == param_shape:
        return PartitionSpec(*param_spec)
    readings = [tuple((k,) for k in keep)
                for keep in itertools.combinations(range(len(param_shape)), len(leaf_shape))
                if tuple(param_shape[k] for k in keep) == leaf_shape]
    readings = readings or list(_merged_readings(leaf_shape, param_shape, 0, 0))
    if not readings:
        return PartitionSpec()
    spec = []
    for pos in range(len(leaf_shape)):
        options = {_run_spec(reading[pos], param_spec) for reading in readings}
        spec.append(options.pop() if len(options) == 1 else None)
    return PartitionSpec(*spec)


def _merged_readings(leaf_shape: tuple[int, ...], param_shape: tuple[int, ...], leaf_dim: int,
                     param_dim: int):
    """Each way to read leaf dims, in order, as runs of adjacent param dims (some param dims
    left out) whose sizes multiply to the leaf dim's: tuples of runs of param dim indices."""
    if leaf_dim == len(leaf_shape):
        yield ()
        return
    for start in range(param_dim, len(param_shape)):
        for end in range(start + 1, len(param_shape) + 1):
            if math.prod(param_shape[start:end]) == leaf_shape[leaf_dim]:
                for rest in _merged_readings(leaf_shape, param_shape, leaf_dim + 1, end):
                    yield (tuple(range(start, end)),) + rest


def _run_spec(run: tuple[int, ...], param_spec: tuple[MeshAxes, ...]) -> MeshAxes:
    """Mesh axes of param dims `run` merged into one: the outer dim's, if the inner ones are
    unsharded (row-major merging keeps each device's part contiguous), else none."""
    if any(param_spec[k] is not None for k in run[1:]):
        return None
    return param_spec[run[0]]


def path_str(path: tuple[Any, ...]) -> str:
    """A tree path as "a/0/b": the same for dicts, lists, tuples and named tuples, so
    orbax's stored trees and the live state name a leaf alike."""
    return jax.tree_util.keystr(path, simple=True, separator="/")
