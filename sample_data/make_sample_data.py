"""Regenerate the bundled sample data: a small synthetic head-like phantom and a sample layer.

    python sample_data/make_sample_data.py

The phantom is a set of nested ellipsoids (skull, brain, ventricles, a lesion) on a 40 x 48 x 44 grid
with a little noise, float32, so that the demo and the tests run offline in a fraction of a second.
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


def main() -> None:
    np.save(HERE / "phantom.npy", phantom())
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
