"""The scripts a user would otherwise run, file to file, as the peers of files_bench.py's rows.

    python benchmarks/peers.py sitk IN OUT --size M0,M1,M2 --map a0,b0,a1,b1,a2,b2 [--interp linear]
    python benchmarks/peers.py torch IN OUT --scale 2
    python benchmarks/peers.py keras IN OUT --spec layer.yaml

Each is one process doing what its tool's documentation shows, nothing tuned for the bench:
- `sitk`: SimpleITK ReadImage, ResampleImageFilter (sitkLinear or sitkBSpline) onto the grid the tool
  writes, WriteImage (.nii.gz at gzip level 1, as the tool's default); for .npy and .h5, which
  SimpleITK does not read, numpy / h5py read and write around GetImageFromArray.
- `torch`: nibabel (or numpy / h5py) load, torch.nn.functional.interpolate trilinear with
  align_corners=False (the preset's grid), save with the scaled affine.
- `keras`: nibabel load, a tf.keras Conv3DTranspose built from the spec and its .npz weights, called
  on the volume, nibabel save of the (i, j, k, filters) result.
The grid map (a, b per axis: output voxel o sits at input voxel a * o + b) comes from the tool's own
geometry (files_bench.py computes it), so every side computes the same voxels.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

H5_CHUNKS = (64, 64, 64)  # about 1 MiB of float32, as the tool's HDF5 writer's default chunks


def kind(path: str) -> str:
    name = path.lower()
    for suffix in (".nii.gz", ".nii", ".h5", ".npy"):
        if name.endswith(suffix):
            return suffix
    raise SystemExit(f"unknown format: {path}")


def load_array(path: str) -> tuple[np.ndarray, object]:
    """(array in file axis order, NIfTI image or None) for the formats SimpleITK does not read."""
    k = kind(path)
    if k == ".npy":
        return np.load(path), None
    if k == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            return f["data"][...], None
    import nibabel as nib

    img = nib.load(path)
    return img.get_fdata(dtype=np.float32), img


def save_array(path: str, y: np.ndarray, img: object = None, affine: np.ndarray | None = None) -> None:
    k = kind(path)
    if k == ".npy":
        np.save(path, y)
    elif k == ".h5":
        import h5py

        with h5py.File(path, "w") as f:
            chunks = tuple(min(c, n) for c, n in zip(H5_CHUNKS, y.shape))
            f.create_dataset("data", data=y, chunks=chunks, compression="gzip", compression_opts=1)
    else:
        import nibabel as nib

        nib.save(nib.Nifti1Image(y, affine, img.header if img is not None else None), path)


def sitk_main(args: argparse.Namespace) -> None:
    import SimpleITK as sitk

    size = [int(v) for v in args.size.split(",")]
    m = [float(v) for v in args.map.split(",")]
    scale, shift = m[0::2], m[1::2]
    k = kind(args.input)
    if k in (".nii", ".nii.gz"):
        img = sitk.ReadImage(args.input, sitk.sitkFloat32)
    else:
        # numpy's (D, H, W) is SimpleITK's (z, y, x): the grid is given in file axis order, reversed here.
        img = sitk.GetImageFromArray(load_array(args.input)[0].astype(np.float32, copy=False))
        size, scale, shift = size[::-1], scale[::-1], shift[::-1]
    f = sitk.ResampleImageFilter()
    f.SetSize(size)
    f.SetOutputSpacing([sp * a for sp, a in zip(img.GetSpacing(), scale)])
    f.SetOutputOrigin(img.TransformContinuousIndexToPhysicalPoint(shift))
    f.SetOutputDirection(img.GetDirection())
    f.SetInterpolator(sitk.sitkBSpline if args.interp == "bspline" else sitk.sitkLinear)
    out = f.Execute(img)
    if k in (".nii", ".nii.gz"):
        sitk.WriteImage(out, args.output, useCompression=k == ".nii.gz", compressionLevel=1)
    else:
        save_array(args.output, sitk.GetArrayViewFromImage(out))


def torch_main(args: argparse.Namespace) -> None:
    import torch

    x, img = load_array(args.input)
    s = int(args.scale)
    with torch.inference_mode():
        y = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None],
            scale_factor=s,
            mode="trilinear",
            align_corners=False,
        )[0, 0].numpy()
    affine = None
    if img is not None:
        # Output voxel o at input voxel (o + 1/2) / s - 1/2: the preset's grid.
        step = np.diag([1 / s, 1 / s, 1 / s, 1.0])
        step[:3, 3] = (1 / s - 1) / 2
        affine = img.affine @ step
    save_array(args.output, y, img, affine)


def keras_main(args: argparse.Namespace) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import nibabel as nib
    import tf_keras as keras
    import yaml

    spec = yaml.safe_load(Path(args.spec).read_text())
    weights = np.load(Path(args.spec).parent / spec["weights"])
    keys = ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "activation", "use_bias")
    spec = {k: spec[k] for k in keys if k in spec}
    img = nib.load(args.input)
    x = img.get_fdata(dtype=np.float32)
    layer = keras.layers.Conv3DTranspose(**spec)
    layer.build((1, *x.shape, 1))
    layer.set_weights([weights["kernel"], weights["bias"]])
    y = layer(x[None, ..., None]).numpy()[0]
    s = layer.strides
    step = np.diag([1 / s[0], 1 / s[1], 1 / s[2], 1.0])
    step[:3, 3] = [(1 / v - 1) / 2 for v in s]
    nib.save(nib.Nifti1Image(y, img.affine @ step), args.output)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="peer", required=True)
    p = sub.add_parser("sitk")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--size", required=True)
    p.add_argument("--map", required=True)
    p.add_argument("--interp", default="linear", choices=("linear", "bspline"))
    p = sub.add_parser("torch")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--scale", default="2")
    p = sub.add_parser("keras")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--spec", required=True)
    args = ap.parse_args()
    {"sitk": sitk_main, "torch": torch_main, "keras": keras_main}[args.peer](args)


if __name__ == "__main__":
    main()
