"""Shared test helpers: a random layer, the whole-volume fp64 reference, and a relative comparison."""

from __future__ import annotations

import numpy as np

from deconv3d_cli import LayerSpec, conv3d_transpose


def random_spec(rng: np.random.Generator, in_ch: int = 1, **hyper) -> LayerSpec:
    """A layer with random weights; filters 2, kernel 3, stride 2, 'same' unless given."""
    hyper = {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same", **hyper}
    k = tuple(LayerSpec.create(**hyper).kernel_size)
    kernel = rng.standard_normal((*k, hyper["filters"], in_ch)).astype(np.float32)
    bias = rng.standard_normal(hyper["filters"]).astype(np.float32)
    return LayerSpec.create(**hyper, kernel=kernel, bias=bias)


def reference(spec: LayerSpec, x: np.ndarray, data_format: str | None = None) -> np.ndarray:
    """The in-memory API on the whole array, in fp64: what every file-based path must reproduce."""
    cfg = spec.to_config()
    return conv3d_transpose(
        x,
        spec.kernel,
        spec.bias,
        strides=cfg["strides"],
        padding=cfg["padding"],
        output_padding=cfg["output_padding"],
        data_format=data_format or cfg["data_format"],
        dilation_rate=cfg["dilation_rate"],
        activation=cfg["activation"],
        precision="fp64",
    )


def assert_close(a: np.ndarray, b: np.ndarray, rel: float = 1e-6) -> None:
    """Equal shapes, and values within `rel` of the reference's magnitude."""
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max()))
    assert float(np.abs(a.astype(np.float64) - b).max()) <= rel * scale


def tiled(engine, spec: LayerSpec, x: np.ndarray, tile_shape) -> np.ndarray:
    """The engine's output of (N, C, D, H, W) `x` assembled tile by tile, each from its own input slab."""
    from deconv3d_cli.geometry.tiling import make_plan

    c = x.shape[1]
    plan = make_plan(
        spec.axes(x.shape[2:]), 1, c, spec.filters, spec.kernel_size, memory_limit=1 << 40, tile_shape=tuple(tile_shape)
    )
    out = np.zeros((x.shape[0], spec.filters, *plan.out_shape), np.float64)
    for t in plan.tiles():
        piece = engine.tile(x[(slice(None), slice(None), *t.src)], t.offsets, t.sizes)
        out[(slice(None), slice(None), *t.out)] = piece.numpy()
    return out


_PARTS = {
    "read": {"dataset": "dataset", "fourth_axis": "fourth_axis", "allow_external": "allow_external"},
    "write": {"output_dataset": "dataset", "output_dtype": "dtype", "overwrite": "overwrite", "resume": "resume",
              "flush_every": "checkpoint_every", "checkpoint_every": "checkpoint_every"},
    "compute": {k: k for k in ("device", "precision", "memory_limit", "tile", "boundary", "engine_path", "threads")},
    "cluster": {"scheduler": "scheduler"},
}  # fmt: skip


def options(**flat):
    """run.options.Options from the flat keywords tests read best (`tile=..., overwrite=True, scheduler=...`);
    `writer_options={...}` sets the write part's format options."""
    from deconv3d_cli.run.options import ClusterOptions, ComputeOptions, Options, ReadOptions, WriteOptions

    parts = {"read": {}, "write": {}, "compute": {}, "cluster": {}}
    progress = flat.pop("progress", True)
    parts["write"].update(flat.pop("writer_options", {}))
    for key, value in flat.items():
        part = next((p for p, names in _PARTS.items() if key in names), None)
        if part is None:
            raise TypeError(f"unknown option {key!r}")
        parts[part][_PARTS[part][key]] = value
    return Options(
        read=ReadOptions(**parts["read"]),
        write=WriteOptions(**parts["write"]),
        compute=ComputeOptions(**parts["compute"]),
        cluster=ClusterOptions(**parts["cluster"]),
        progress=progress,
    )
