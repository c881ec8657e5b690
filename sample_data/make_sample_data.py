"""Regenerate the bundled sample data: a small synthetic head-like phantom and a sample layer.

    python sample_data/make_sample_data.py

The phantom is a set of nested ellipsoids (skull, brain, ventricles, a lesion) on a 40 x 48 x 44 grid
with a little noise, float32, so that the demo and the tests run offline in a fraction of a second.
It is saved three ways:

- `phantom.npy`: the float32 array;
- `phantom.nii.gz`: NIfTI-1 as a scanner would write it: int16 with `scl_slope` 0.05 (so the values
  read back are the phantom's to within 0.025), 1.0 x 1.2 x 1.1 mm voxels, an oblique affine (rotated
  12 degrees about x and 10 degrees about z, the volume's centre near the origin), qform code 1
  (scanner) and sform code 2 (aligned), units mm and s;
- `phantom.h5`: HDF5 dataset `volume` (float32, gzip), with `element_size_um` = 1000, 1200, 1100.
The sample layer is a 1 -> 1 channel Conv3DTranspose, kernel 4, stride 2, padding 'same', whose
kernel is the separable linear-interpolation kernel [0.25, 0.75, 0.75, 0.25] per axis: a real,
trained-looking x2 upsampler whose output is easy to judge by eye.
"""

from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent


def phantom(shape=(40, 48, 44), seed=0) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    vol = np.zeros(shape, np.float32)

    def ellipsoid(center, radii, value):
        r = sum(((grid[a] - center[a]) / radii[a]) ** 2 for a in range(3))
        vol[r <= 1] = value

    ellipsoid((0, 0, 0), (0.92, 0.85, 0.9), 800.0)  # skull
    ellipsoid((0, 0, 0), (0.84, 0.77, 0.82), 300.0)  # brain
    ellipsoid((0.05, 0.1, 0.0), (0.3, 0.15, 0.25), 40.0)  # ventricles
    ellipsoid((-0.35, -0.3, 0.35), (0.12, 0.1, 0.14), 520.0)  # lesion
    rng = np.random.default_rng(seed)
    return (vol + rng.normal(0, 5, shape)).astype(np.float32)


SPACING_MM = (1.0, 1.2, 1.1)
SCL_SLOPE = 0.05


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def oblique_affine(shape=(40, 48, 44)) -> np.ndarray:
    """Voxel -> scanner mm: zooms SPACING_MM, rotated about x then z, the volume's centre near the origin."""
    rzs = _rotation(2, 10.0) @ _rotation(0, 12.0) @ np.diag(SPACING_MM)
    centre = (np.array(shape) - 1) / 2
    affine = np.eye(4)
    affine[:3, :3] = rzs
    affine[:3, 3] = -rzs @ centre + np.array([1.5, -2.0, 3.0])
    return affine


def save_nifti(vol: np.ndarray, path: Path) -> None:
    """int16 data with scl_slope, written byte for byte (nibabel's writer would choose its own scaling)."""
    import gzip

    import nibabel as nib

    affine = oblique_affine(vol.shape)
    hdr = nib.Nifti1Header(endianness="<")
    hdr.set_data_shape(vol.shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(affine, code="scanner")
    hdr.set_sform(affine, code="aligned")
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_slope_inter(SCL_SLOPE, 0.0)
    hdr["descrip"] = b"deconv3d-cli sample phantom"
    hdr["vox_offset"] = 352
    stored = np.round(vol / SCL_SLOPE).astype("<i2")
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:  # mtime 0: the same bytes every time
        hdr.write_to(f)
        f.write(stored.tobytes(order="F"))


def save_hdf5(vol: np.ndarray, path: Path) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "volume",
            data=vol,
            chunks=(20, 24, 22),
            compression="gzip",
            compression_opts=9,
            shuffle=True,
            track_times=False,
        )
        ds.attrs["element_size_um"] = np.array([v * 1000.0 for v in SPACING_MM])


def main() -> None:
    vol = phantom()
    np.save(HERE / "phantom.npy", vol)
    save_nifti(vol, HERE / "phantom.nii.gz")
    save_hdf5(vol, HERE / "phantom.h5")
    taps = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
    kernel = (taps[:, None, None] * taps[None, :, None] * taps[None, None, :])[..., None, None]
    np.savez(HERE / "sample_spec.npz", kernel=kernel.astype(np.float32), bias=np.zeros(1, np.float32))
    spec = {
        "filters": 1,
        "kernel_size": 4,
        "strides": 2,
        "padding": "same",
        "data_format": "channels_last",
        "activation": "relu",
        "use_bias": True,
        "weights": "sample_spec.npz",
    }
    text = "# A 1 -> 1 channel x2 upsampling layer (linear-interpolation kernel); see make_sample_data.py.\n"
    (HERE / "sample_spec.yaml").write_text(text + yaml.safe_dump(spec, sort_keys=False))


if __name__ == "__main__":
    main()
