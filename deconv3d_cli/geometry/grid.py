"""Output grids for resampling: the output's shape, its voxel-to-world affine, and each axis's map onto the input.

A grid is said one of four ways (exactly one): `voxel_size` (in the units of the input's affine, mm for
NIfTI), real `scale` factors >= 1, an output `shape`, or `like` another grid (its shape and affine).
For the first three the output covers the input's field of view exactly, voxel edges aligned (the
`align_corners=False` convention of torch, SimpleITK users' usual set-up and mrgrid's `-scale`): on
an axis of `n` input and `m` output voxels, output voxel `o` sits at input voxel coordinate

    u(o) = a * o + b,    a = n / m,    b = (n - m) / (2 m),

so output voxel `o` spans input coordinates [(o) a - 1/2, (o + 1) a - 1/2]. The output affine is the
input's composed with that map (orientation and shear kept); `a` and `b` are each one correctly
rounded division, so an integer scale gives the trilinear preset's affine to the last bit.

The output length (the one rounding rule): the exact length ratio `x` (`n * v_in / v_out` for a voxel
size, `n * f` for a factor) rounded to the nearest integer, halves up (within ROUND_TOL, so that
decimal sizes such as 1.2 / 0.4 whose binary quotient misses the integer or the half by 1e-16 round
as written). An integer factor gives exactly `s * n`, a factor >= 1 never fewer voxels than the
input. Peers: SimpleITK users write `round(n * v_in / v_out)` (Python's round, halves to even) and
keep the voxel size exact, moving the field of view; mrgrid `-voxel` rounds halves down and centres
a field of view of exactly `v_out`-sized voxels, while its `-scale` takes `ceil(n * f)` and keeps the
field of view; nibabel's `conform` takes the shape and voxel size both from the caller and centres the
result. Keeping the field of view exact (the voxel size then differs from the asked one by at most
half an output voxel over the whole extent) is what makes an integer factor today's preset grid and
what lets two tools' grids be compared voxel for voxel.

This module imports only numpy and the standard library (geometry/ is the package's pure math).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

GRID_PARAMS = ("voxel_size", "scale", "shape", "like")
# Length ratios within this many output voxels of an integer + 1/2 round up (see the module docstring).
ROUND_TOL = 1e-6
# A voxel size (or a `like` spacing) up to this much larger than the input's counts as equal to it:
# NIfTI stores spacings as float32, so a header's 1.2 reads back as 1.2000000476837158.
REL_TOL = 1e-6
# `like`: a reference axis whose direction drifts by at most this many input voxels (over the whole
# reference extent) off the input axis it runs along counts as parallel; the drift is then ignored.
PARALLEL_TOL = 1e-3
# A reference grid within this many input voxels of the input's own field of view is taken as exactly it
# (float32 NIfTI headers round a grid this tool wrote by about 1e-7 of its extent).
SNAP_TOL = 1e-4


class GridError(ValueError):
    """A grid that cannot be made as asked; `param` names the setting to change (`voxel_size`, `scale`, ...).

    Geometry knows no error types of the package's (as tiling.PlanError); the layer and the run turn
    this into an InputError / SpecError carrying the same `param`.
    """

    exit_code = 2

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class AxisMap:
    """Output voxel `o` sits at input voxel coordinate `scale * o + shift` (voxel centres at integers)."""

    scale: float
    shift: float

    def __call__(self, o: Any) -> Any:
        return self.scale * np.asarray(o, dtype=np.float64) + self.shift


@dataclass(frozen=True, eq=False)
class Grid:
    """An output grid over a given input grid: shapes, the output's affine, and the per-axis maps."""

    in_shape: tuple[int, int, int]
    shape: tuple[int, int, int]
    affine: np.ndarray  # output voxel (centre) -> world, 4x4 float64, read-only
    maps: tuple[AxisMap, AxisMap, AxisMap]
    kind: str  # which of GRID_PARAMS said it

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_of(self.affine)

    @property
    def factors(self) -> tuple[float, float, float]:
        """Output voxels per input voxel along each axis (1 / |a|): 1.5 for a scale of 1.5."""
        return tuple(1.0 / abs(m.scale) for m in self.maps)  # type: ignore[return-value]

    def world(self, index: Any) -> np.ndarray:
        """World coordinates of output voxel centres `index` (..., 3)."""
        idx = np.asarray(index, dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def describe(self) -> dict[str, Any]:
        return {
            "grid": self.kind,
            "input_shape": list(self.in_shape),
            "output_shape": list(self.shape),
            "spacing_out": [float(v) for v in self.spacing],
            "factors": [float(f) for f in self.factors],
            "affine_out": self.affine.tolist(),
        }


def spacing_of(affine: Any) -> tuple[float, float, float]:
    """Voxel spacing along each array axis: the lengths of the affine's first three columns."""
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))  # type: ignore[return-value]


def spacing_affine(spacing: Sequence[float] | None) -> np.ndarray:
    """`diag(spacing, 1)`: the affine of a format that stores only spacings (voxel 0 at the origin)."""
    values = (1.0, 1.0, 1.0) if spacing is None else parse_triple(spacing, "spacing")
    for a, v in enumerate(values):
        if not (math.isfinite(v) and v > 0):
            raise GridError(f"spacing {list(values)} must be positive and finite on every axis (axis {a})", "spacing")
    return np.diag([*values, 1.0])


def rounded_length(ratio: float) -> int:
    """The module's one rounding rule: the nearest integer, halves (within ROUND_TOL) up."""
    return int(math.floor(ratio + 0.5 + ROUND_TOL))


def parse_triple(value: Any, param: str, integer: bool = False) -> tuple:
    """`0.5`, `"0.5"`, `"1.2,1.2,3"`, `"2x2x1"` or a sequence of 1 or 3 -> three numbers (floats, or ints)."""
    if isinstance(value, str):
        parts: list[Any] = [p for p in value.replace("x", ",").split(",") if p.strip()]
    elif isinstance(value, (int, float, np.integer, np.floating)):
        parts = [value]
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = [value]
    hint = "e.g. 256 or 256,256,64" if integer else "e.g. 0.5 or 1.2,1.2,3"
    try:
        nums = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise GridError(f"{value!r} is not a number or three; use {hint}", param) from None
    if len(nums) == 1:
        nums *= 3
    if len(nums) != 3:
        raise GridError(f"{value!r} has {len(nums)} values; give one or three, {hint}", param)
    if integer:
        if any(not math.isfinite(n) or n != int(n) for n in nums):
            raise GridError(f"{value!r} must be whole numbers of voxels, {hint}", param)
        return tuple(int(n) for n in nums)
    return tuple(nums)


def _check_affine(affine: Any, param: str, what: str) -> np.ndarray:
    try:
        a = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        raise GridError(f"the {what} affine is not a 4x4 array of numbers", param) from None
    if a.shape != (4, 4):
        raise GridError(f"the {what} affine has shape {a.shape}; a 4x4 voxel-to-world matrix is needed", param)
    if not np.all(np.isfinite(a)):
        raise GridError(f"the {what} affine has non-finite entries", param)
    if not np.allclose(a[3], (0, 0, 0, 1)):
        raise GridError(f"the {what} affine's last row is {a[3].tolist()}; it must be [0, 0, 0, 1]", param)
    if abs(np.linalg.det(a[:3, :3])) <= 1e-12 * max(float(np.abs(a[:3, :3]).max()), 1e-300) ** 3:
        raise GridError(f"the {what} affine is singular (some axis has no extent in world space)", param)
    return a


def _check_shape(shape: Any, param: str, what: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise GridError(f"the {what} shape {shape!r} is not three whole numbers", param) from None
    if len(dims) != 3 or any(n < 1 for n in dims):
        raise GridError(f"the {what} shape {list(dims)} must be three positive lengths", param)
    return dims[0], dims[1], dims[2]


def _like_parts(like: Any) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) from a Grid, anything with `.shape` and `.affine` (a nibabel image), or a pair."""
    if hasattr(like, "affine") and hasattr(like, "shape"):
        shape, affine = tuple(like.shape)[:3], like.affine
    else:
        try:
            shape, affine = like
        except (TypeError, ValueError):
            raise GridError(
                "give the reference as (shape, affine), or an object with .shape and .affine", "like"
            ) from None
        shape = tuple(shape)[:3]
    return _check_shape(shape, "like", "reference"), _check_affine(affine, "like", "reference")


@dataclass(frozen=True)
class GridRequest:
    """One of the four ways of saying the grid, checked on its own (before any input is known)."""

    kind: str
    values: tuple | None = None  # voxel_size / scale (floats) or shape (ints)
    like_shape: tuple[int, int, int] | None = None
    like_affine: tuple[tuple[float, ...], ...] | None = None

    @classmethod
    def create(cls, voxel_size: Any = None, scale: Any = None, shape: Any = None, like: Any = None) -> GridRequest:
        given = [name for name, v in zip(GRID_PARAMS, (voxel_size, scale, shape, like)) if v is not None]
        if not given:
            raise GridError("say the output grid: give one of voxel_size, scale, shape or like", "voxel_size")
        if len(given) > 1:
            raise GridError(f"give one of {', '.join(GRID_PARAMS)}, not {' and '.join(given)}", given[1])
        kind = given[0]
        if kind == "like":
            ref_shape, ref_affine = _like_parts(like)
            return cls("like", None, ref_shape, tuple(tuple(float(v) for v in row) for row in ref_affine))
        if kind == "shape":
            dims = parse_triple(shape, "shape", integer=True)
            if any(n < 1 for n in dims):
                raise GridError(f"shape {list(dims)} must be positive on every axis", "shape")
            return cls("shape", dims)
        value = voxel_size if kind == "voxel_size" else scale
        nums = parse_triple(value, kind)
        for a, v in enumerate(nums):
            if not math.isfinite(v):
                raise GridError(f"{kind} {list(nums)} is not finite on axis {a}", kind)
            if kind == "voxel_size" and v <= 0:
                raise GridError(f"voxel_size {list(nums)} must be positive on every axis (axis {a})", kind)
            if kind == "scale" and v < 1:
                raise GridError(
                    f"scale {v:g} on axis {a} is below 1 (downsampling), which is not supported; use factors >= 1",
                    kind,
                )
        return cls(kind, nums)

    def resolve(self, in_shape: Sequence[int], affine: Any) -> Grid:
        """The output grid over an input of `in_shape` voxels with voxel-to-world `affine` (voxel centres)."""
        n = _check_shape(in_shape, "in_shape", "input")
        a_in = _check_affine(affine, "affine", "input")
        if self.kind == "like":
            return self._resolve_like(n, a_in)
        v_in = spacing_of(a_in)
        if self.kind == "shape":
            m = tuple(int(v) for v in self.values)  # type: ignore[union-attr]
            for ax in range(3):
                if m[ax] < n[ax]:
                    raise GridError(
                        f"shape {list(m)} is smaller than the input's {list(n)} on axis {ax} (downsampling is not "
                        f"supported); use at least {n[ax]} there",
                        "shape",
                    )
        elif self.kind == "voxel_size":
            vs = self.values
            for ax in range(3):
                if vs[ax] > v_in[ax] * (1 + REL_TOL):  # type: ignore[index]
                    raise GridError(
                        f"voxel_size {vs[ax]:g} on axis {ax} is larger than the input's {v_in[ax]:g} (downsampling "  # type: ignore[index]
                        f"is not supported); use at most {v_in[ax]:g} there",
                        "voxel_size",
                    )
            m = tuple(max(n[ax], rounded_length(n[ax] * v_in[ax] / vs[ax])) for ax in range(3))  # type: ignore[index]
        else:
            m = tuple(rounded_length(n[ax] * self.values[ax]) for ax in range(3))  # type: ignore[index]
        maps = tuple(AxisMap(n[ax] / m[ax], (n[ax] - m[ax]) / (2 * m[ax])) for ax in range(3))
        return Grid(n, m, _readonly(a_in @ map_matrix(maps)), maps, self.kind)  # type: ignore[arg-type]

    def _resolve_like(self, n: tuple[int, int, int], a_in: np.ndarray) -> Grid:
        ref_shape = self.like_shape
        a_ref = np.asarray(self.like_affine, dtype=np.float64)
        m = np.linalg.solve(a_in, a_ref)  # reference voxel -> input voxel coordinates
        rot = m[:3, :3]
        for j in range(3):
            # Column j: the step in input voxels of one reference voxel along its axis j.
            col = rot[:, j]
            i = int(np.argmax(np.abs(col)))
            off = np.delete(col, i)
            if float(np.abs(off).sum()) * max(ref_shape[j] - 1, 1) > PARALLEL_TOL:  # type: ignore[index]
                d_ref, d_in = a_ref[:3, j], a_in[:3, i]
                cos = abs(float(d_ref @ d_in)) / float(np.linalg.norm(d_ref) * np.linalg.norm(d_in))
                angle = math.degrees(math.acos(min(cos, 1.0)))
                raise GridError(
                    f"the reference's axis {j} is at {angle:.3g} degrees to the input's axis {i}; only grids whose "
                    "axes are parallel to the input's can be resampled here (rotate with e.g. SimpleITK first)",
                    "like",
                )
            if i != j:
                raise GridError(
                    f"the reference's axis {j} runs along the input's axis {i} (the axes are permuted); reorient "
                    "one of them so that their axes come in the same order (flips are fine)",
                    "like",
                )
        maps = tuple(AxisMap(float(rot[j, j]), float(m[j, 3])) for j in range(3))
        fov = tuple(AxisMap(n[j] / ref_shape[j], (n[j] - ref_shape[j]) / (2 * ref_shape[j])) for j in range(3))  # type: ignore[index]
        if all(_same_map(a, b, ref_shape[j]) for j, (a, b) in enumerate(zip(maps, fov))):  # type: ignore[index]
            # The reference is this input's own field of view at another size (a grid made by this tool,
            # written with a float32 header): the exact maps, so a round trip gives the same bytes.
            return Grid(n, ref_shape, _readonly(a_in @ map_matrix(fov)), fov, "like")  # type: ignore[arg-type]
        for ax, mp in enumerate(maps):
            if abs(mp.scale) > 1 + REL_TOL:
                raise GridError(
                    f"the reference's voxels are {abs(mp.scale):.4g} times the input's on axis {ax} (downsampling is "
                    "not supported); use a reference at least as fine as the input",
                    "like",
                )
        return Grid(n, ref_shape, _readonly(a_ref), maps, "like")  # type: ignore[arg-type]


def output_grid(
    in_shape: Sequence[int],
    affine: Any,
    *,
    voxel_size: Any = None,
    scale: Any = None,
    shape: Any = None,
    like: Any = None,
) -> Grid:
    """The output grid for an input of `in_shape` and `affine`, said exactly one of the four ways."""
    return GridRequest.create(voxel_size=voxel_size, scale=scale, shape=shape, like=like).resolve(in_shape, affine)


def _same_map(a: AxisMap, b: AxisMap, size: int) -> bool:
    """Whether two axis maps place every one of `size` voxels within SNAP_TOL input voxels of each other."""
    return abs(a.shift - b.shift) <= SNAP_TOL and abs(a.scale - b.scale) * max(size - 1, 1) <= SNAP_TOL


def map_matrix(maps: Sequence[AxisMap]) -> np.ndarray:
    """The 4x4 output-voxel -> input-voxel matrix of per-axis maps: diag(a) plus the shifts b."""
    t = np.eye(4)
    for ax, mp in enumerate(maps):
        t[ax, ax] = mp.scale
        t[ax, 3] = mp.shift
    return t


def _readonly(a: np.ndarray) -> np.ndarray:
    out = np.array(a, dtype=np.float64)
    out.flags.writeable = False
    return out
