"""The Python face: a Keras-like `Conv3DTranspose` class and a functional `conv3d_transpose`.

Both are thin: they build a LayerSpec (all validation lives there) and run the engine on the whole
array. They accept numpy arrays (returning numpy) or torch tensors (returning torch, on their device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .errors import SpecError
from .geometry.layout import Layout
from .layer.presets import DEFAULT_BOUNDARY
from .layer.spec import KERAS_ARGS, LayerSpec


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def run_array(spec: LayerSpec, x: Any, device: str = "cpu", precision: str = "fp32", engine: Any = None) -> Any:
    """Apply `spec` to a whole array in the layout its ndim and `spec.data_format` imply."""
    from .engine import core as engine_mod

    if not _is_torch(x):
        x = np.asarray(x)
    layout = spec.layout(x.ndim) if x.ndim in (3, 4, 5) else None
    if layout is None:
        raise SpecError(f"input has {x.ndim} dimensions; expected 3 (D, H, W), 4 or 5 (with channels, batch)")
    in_channels = layout.channels(x.shape)
    if engine is None or engine.in_channels != in_channels:
        engine = engine_mod.Engine(spec, in_channels, device=device, precision=precision)
    if _is_torch(x):
        return _from_ncdhw_torch(layout, engine.whole(_to_ncdhw_torch(layout, x)), spec.filters)
    y = engine_mod.to_numpy(engine.whole(layout.to_ncdhw(x)))
    return engine_mod.dense(layout.from_ncdhw(y, spec.filters))


def _to_ncdhw_torch(layout: Layout, x: Any) -> Any:
    if layout.ndim == 3:
        return x[None, None]
    if layout.ndim == 4:
        x = x[None]
    return x.movedim(-1, 1) if layout.data_format == "channels_last" else x


def _from_ncdhw_torch(layout: Layout, y: Any, filters: int) -> Any:
    out = layout.output_layout(filters)
    if out.data_format == "channels_last":
        y = y.movedim(1, -1)
    if out.ndim == 5:
        return y.contiguous()
    if out.ndim == 4:
        return y[0].contiguous()
    return (y[0, 0] if out.data_format == "channels_first" else y[0, ..., 0]).contiguous()


def conv3d_transpose(
    x: Any,
    kernel: Any,
    bias: Any = None,
    *,
    filters: int | None = None,
    kernel_size: Any = None,
    strides: Any = 1,
    padding: str = "valid",
    output_padding: Any = None,
    data_format: str | None = None,
    dilation_rate: Any = 1,
    activation: Any = None,
    use_bias: bool | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> Any:
    """Keras's Conv3DTranspose applied to `x` with the given kernel (Keras layout) and bias.

    `filters` and `kernel_size` default to the kernel's own shape; `use_bias` to whether a bias is given.
    """
    kernel = kernel.detach().cpu().numpy() if _is_torch(kernel) else np.asarray(kernel)
    if bias is not None:
        bias = bias.detach().cpu().numpy() if _is_torch(bias) else np.asarray(bias)
    if kernel.ndim != 5:
        raise SpecError(f"kernel must be 5-D (kd, kh, kw, filters, in), got shape {kernel.shape}", field="kernel")
    hyper = {k: v for k, v in locals().items() if k in KERAS_ARGS}  # the Keras arguments, as given
    hyper.update(
        filters=int(kernel.shape[3]) if filters is None else filters,
        kernel_size=tuple(int(n) for n in kernel.shape[:3]) if kernel_size is None else kernel_size,
        use_bias=(bias is not None) if use_bias is None else use_bias,
    )
    spec = LayerSpec.create(**hyper, kernel=kernel, bias=bias)
    return run_array(spec, x, device=device, precision=precision)


class Conv3DTranspose:
    """Keras's `Conv3DTranspose` constructor, weights and call, for inference with torch."""

    def __init__(
        self,
        filters: int,
        kernel_size: Any,
        strides: Any = (1, 1, 1),
        padding: str = "valid",
        output_padding: Any = None,
        data_format: str | None = None,
        dilation_rate: Any = (1, 1, 1),
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        *,
        seed: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        **kwargs: Any,
    ) -> None:
        allowed = {"name", "trainable", "dtype", "batch_input_shape", "batch_shape", "groups", "input_dim"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise SpecError("unexpected keyword argument", field=sorted(unknown)[0])
        self.spec = LayerSpec.create(
            **{k: v for k, v in locals().items() if k in KERAS_ARGS},  # Keras's arguments, by their names
            name=kwargs.get("name"),
            groups=kwargs.get("groups", 1),
            seed=seed,
        )
        self.name = kwargs.get("name") or "conv3d_transpose"
        self.trainable = bool(kwargs.get("trainable", True))
        self.dtype = kwargs.get("dtype") or "float32"
        self.device = device
        self.precision = precision
        self._engine: Any = None

    @classmethod
    def from_spec(cls, spec: LayerSpec, device: str = "cpu", precision: str = "fp32") -> Conv3DTranspose:
        layer = cls.__new__(cls)
        layer.spec, layer.name, layer.trainable, layer.dtype = spec, spec.name or "conv3d_transpose", True, "float32"
        layer.device, layer.precision, layer._engine = device, precision, None
        return layer

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Conv3DTranspose:
        layer = cls.from_spec(LayerSpec.from_mapping(config))
        layer.trainable = bool(config.get("trainable", True))
        layer.dtype = config.get("dtype") or "float32"
        return layer

    # -------------------------------------------------------------- Keras surface
    @property
    def built(self) -> bool:
        return self.spec.kernel is not None

    def build(self, input_shape: Sequence[int | None]) -> None:
        """Create the weights for inputs of this shape (batch may be None), from the initializers."""
        channels = self.spec.layout(len(input_shape)).channels([1 if n is None else n for n in input_shape])
        kernel, bias = self.spec.materialise(channels)
        self.spec = self.spec.with_weights(kernel, bias)
        self._engine = None

    def get_weights(self) -> list[np.ndarray]:
        if not self.built:
            return []
        return [self.spec.kernel] + ([self.spec.bias] if self.spec.use_bias else [])

    def set_weights(self, weights: Sequence[Any]) -> None:
        expected = 2 if self.spec.use_bias else 1
        if len(weights) != expected:
            raise SpecError(
                f"expected {expected} array(s) ([kernel{', bias' if expected == 2 else ''}]), got {len(weights)}",
                field="weights",
            )
        kernel = np.asarray(weights[0])
        if self.built and kernel.shape != self.spec.kernel.shape:
            raise SpecError(
                f"kernel shape {kernel.shape} does not match the built layer's {self.spec.kernel.shape}",
                field="kernel",
            )
        self.spec = self.spec.with_weights(kernel, weights[1] if expected == 2 else None)
        self._engine = None

    @property
    def kernel(self) -> np.ndarray | None:
        return self.spec.kernel

    @property
    def bias(self) -> np.ndarray | None:
        return self.spec.bias

    def __call__(self, x: Any) -> Any:
        shape = tuple(x.shape)
        if not self.built:
            self.build(shape)
        layout = self.spec.layout(len(shape))
        if self._engine is None or self._engine.in_channels != layout.channels(shape):
            from .engine.core import Engine

            self._engine = Engine(self.spec, layout.channels(shape), self.device, self.precision)
        return run_array(self.spec, x, engine=self._engine)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        batch = input_shape[0] if len(input_shape) == 5 else None
        shape = [1 if n is None else n for n in input_shape]
        layout = self.spec.layout(len(shape))
        out = list(self.spec.output_shape(shape))
        if len(input_shape) == 5:
            out[0] = batch
        # An unknown spatial length stays unknown, as Keras's deconv_output_length returns None for None.
        out_layout = layout.output_layout(self.spec.filters)
        for a_in, a_out in zip(layout.spatial_axes, out_layout.spatial_axes):
            if input_shape[a_in] is None:
                out[a_out] = None
        return tuple(out)

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        """The bare transposed convolution with this layer's geometry: no bias, no activation."""
        s = self.spec
        return conv3d_transpose(
            inputs,
            kernel,
            None,
            strides=s.strides,
            padding=s.padding,
            output_padding=s.output_padding,
            data_format=s.data_format,
            dilation_rate=s.dilation_rate,
            use_bias=False,
            device=self.device,
            precision=self.precision,
        )

    def get_config(self) -> dict[str, Any]:
        config = self.spec.to_config()
        config.update(name=self.name, trainable=self.trainable, dtype=self.dtype)
        return config

    def __repr__(self) -> str:
        return f"Conv3DTranspose({self.spec.describe()})"


def upsample(
    x: Any,
    name: str,
    scale: Any,
    boundary: str = DEFAULT_BOUNDARY,
    data_format: str = "channels_last",
    device: str = "cpu",
    precision: str = "fp32",
) -> np.ndarray:
    """In-memory preset upsampling of a 3-, 4- or 5-D array (the CLI's `--preset NAME --scale S`)."""
    from .engine import Engine, to_numpy
    from .geometry import boundary as bnd
    from .layer.presets import make_spec

    x = np.asarray(x)
    layout = Layout(x.ndim, data_format)
    spec = make_spec(name, scale, layout.channels(x.shape), data_format)
    axes = bnd.extend_axes(spec.axes(layout.spatial_shape(x.shape)), boundary)
    ranges = [ax.input_range(0, ax.out) for ax in axes]
    slab = bnd.read_slab(
        lambda index: x[index], layout, [slice(r.lo, r.hi) for r in ranges], slice(None), axes, boundary
    )
    engine = Engine(spec, layout.channels(x.shape), device, precision)
    y = engine.tile(layout.to_ncdhw(slab), [r.offset for r in ranges], [ax.out for ax in axes])
    return np.ascontiguousarray(layout.from_ncdhw(to_numpy(y), spec.filters))


RESAMPLE_ARGS = ("voxel_size", "scale", "shape", "like", "interp", "boundary", "data_format")


class Resampled(NamedTuple):
    """What `resample_image` returns: the resampled array and its grid's affine, as a nibabel image holds them.

    A tuple, so `y, affine = resample_image(...)` works; `.spacing` is the output voxel size. Anything
    with `.shape` and `.affine` serves as `like=`, so a result can be a later call's reference (its
    first three axes are taken as the spatial shape: give `like=(shape, affine)` for channels_first).
    """

    array: Any  # numpy (float32) or torch, in the input's layout and kind
    affine: np.ndarray  # output voxel centre -> world, 4x4 float64

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        from .geometry.grid import spacing_of

        return spacing_of(self.affine)


def resample_image(
    x: Any,
    *,
    voxel_size: Any = None,
    scale: Any = None,
    shape: Any = None,
    like: Any = None,
    spacing: Any = None,
    affine: Any = None,
    interp: str = "linear",
    boundary: str = "replicate",
    data_format: str = "channels_last",
    device: str = "cpu",
    precision: str = "fp32",
) -> Resampled:
    """`resample` with the output's affine: `Resampled(array, affine)`, the same array `resample` returns.

    The affine is the output grid's voxel-centre-to-world matrix (4x4 float64), computed once, by the
    same `geometry.grid` the command line writes into NIfTI/Zarr headers, so callers never rebuild it.
    """
    from .engine import to_numpy
    from .engine.resample import Resampler
    from .layer.resample import ResampleSpec

    request = {k: v for k, v in locals().items() if k in RESAMPLE_ARGS}  # the resampling's own arguments
    spec = ResampleSpec.create(**request)
    if spacing is not None and affine is not None:
        raise SpecError("give spacing or affine, not both", param="spacing")
    torch_in = _is_torch(x)
    if not torch_in:
        x = np.asarray(x)
    if x.ndim not in (3, 4, 5):
        raise SpecError(f"input has {x.ndim} dimensions; expected 3 (D, H, W), 4 or 5 (with channels, batch)")
    layout = Layout(x.ndim, spec.data_format)
    grid = spec.grid(layout.spatial_shape(x.shape), affine=affine, spacing=spacing)
    channels = layout.channels(x.shape)
    out_affine = np.array(grid.affine, dtype=np.float64)  # a writable copy: the grid's own is read-only
    if torch_in:
        resampler = Resampler(spec, grid, channels, device=x.device, precision=precision)
        return Resampled(_from_ncdhw_torch(layout, resampler.whole(_to_ncdhw_torch(layout, x)), channels), out_affine)
    resampler = Resampler(spec, grid, channels, device=device, precision=precision)
    y = to_numpy(resampler.whole(layout.to_ncdhw(x)))
    return Resampled(np.ascontiguousarray(layout.from_ncdhw(y, channels)), out_affine)


def resample(
    x: Any,
    *,
    voxel_size: Any = None,
    scale: Any = None,
    shape: Any = None,
    like: Any = None,
    spacing: Any = None,
    affine: Any = None,
    interp: str = "linear",
    boundary: str = "replicate",
    data_format: str = "channels_last",
    device: str = "cpu",
    precision: str = "fp32",
) -> Any:
    """`x` (3-, 4- or 5-D, numpy or torch) resampled onto the grid said by exactly one of `voxel_size`,
    `scale` (real factors >= 1), `shape` or `like` (a reference's (shape, affine), or anything with
    `.shape` and `.affine`), with `interp` nearest | linear | cubic | bspline | lanczos.

    The input grid is `affine` (voxel centres to world) or `diag(spacing, 1)` (spacing 1 by default);
    voxel sizes are in its units. The result keeps `x`'s layout and kind (numpy in, float32 numpy out;
    torch in, torch out on its device), each channel resampled alone. The array alone, as before;
    `resample_image` (same arguments) returns the output's affine with it.
    """
    request = {k: v for k, v in locals().items() if k != "x"}
    return resample_image(x, **request).array
