"""The demo dataset: random, realistic deformations of the real MNI152 brain MRI shipped with the package.

The package ships the MNI ICBM152 2009a symmetric T1 template with its grey- and white-matter probability maps
(1 mm, skull-stripped, cropped to the brain; copyright notice in ``medseg_attn/resources/mni152_NOTICE.txt``).
Each demo case is a new random variant of that template, made with torch on the CPU in well under a second per case:

1. geometry: a random affine about the brain centre (rotation, per-axis scaling, translation) composed with a
   smooth random elastic displacement field;
2. resampling: T1, GM and WM maps are sampled through that deformation with linear interpolation onto an
   isotropic RAS grid covering the template's field of view (the template is Gaussian-smoothed first when the
   grid is coarser than 1 mm, so that it does not alias);
3. label: ``argmax(background = max(1 - gm - wm, 0), gm, wm)`` -> 0 background, 1 grey matter, 2 white matter;
4. appearance: a smooth multiplicative bias field, a random gamma (contrast), a random global scale and Rician
   noise, stored as int16 in a typical MRI range (0 to about 1500).

The result is a Medical Segmentation Decathlon layout: training cases on a coarse grid (2 mm by default, what
the demo trains on) and held-out cases on the 1 mm grid (what it is evaluated on), drawn from disjoint seeds.
"""

from __future__ import annotations

import functools
import json
import logging
import lzma
import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write_text
from medseg_attn.io.nifti import write_nifti

logger = logging.getLogger(__name__)

__all__ = ["LABELS", "DemoCase", "build_demo_dataset", "check_build_arguments", "deformed_template", "generate_case",
           "load_template", "mri_appearance", "output_grid", "tissue_label"]

LABELS = {0: "background", 1: "grey_matter", 2: "white_matter"}

RESOURCE_PACKAGE = "medseg_attn.resources"
TEMPLATE_KEYS = ("t1", "gm", "wm")
TEST_SEED_OFFSET = 10_000  # held-out case j uses seed + 10_000 + j; training case i uses seed + i

REFERENCE = (
    "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average age-appropriate brain "
    "templates from birth to adulthood. NeuroImage 47 (2009) S102. Fonov V, Evans AC, Botteron K, Almli CR, "
    "McKinstry RC, Collins DL. Unbiased average age-appropriate atlases for pediatric studies. NeuroImage 54 "
    "(2011) 313-327. MNI ICBM152 non-linear symmetric 2009a."
)
LICENCE = (
    "Derived from the MNI ICBM152 2009a template. Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging "
    "Centre, Montreal Neurological Institute, McGill University. Permission to use, copy, modify, and distribute "
    "this software and its documentation for any purpose and without fee is hereby granted, provided that the "
    "above copyright notice appear in all copies. The authors and McGill University make no representations "
    "about the suitability of this software for any purpose. It is provided \"as is\" without express or implied "
    "warranty."
)

# Augmentation ranges (documented in build_demo_dataset)
MAX_ROTATION_DEGREES = 10.0
SCALE_RANGE = (0.9, 1.1)
MAX_TRANSLATION_MM = 5.0
ELASTIC_CONTROL_POINTS = (5, 8)  # per axis, drawn per case
ELASTIC_MAX_MM = (3.0, 6.0)  # largest displacement of a case, drawn per case
BIAS_AMPLITUDE = (0.15, 0.30)  # bias field within exp(+-log(1 + a))
GAMMA_RANGE = (0.7, 1.5)
INTENSITY_SCALE = (700.0, 1100.0)  # brightest template tissue maps to about this value
NOISE_FRACTION = (0.01, 0.04)  # noise sigma as a fraction of the mean brain intensity


@functools.lru_cache(maxsize=1)
def _template_cached() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    volumes = {}
    affine = None
    for key in TEMPLATE_KEYS:
        image = _read_resource(key)
        canonical = nib.as_closest_canonical(image)  # stored with reversed axes; RAS here
        volumes[key] = np.asarray(canonical.dataobj, dtype=np.float32)
        if affine is None:
            affine = np.asarray(canonical.affine, dtype=np.float64)
        elif not np.allclose(affine, canonical.affine) or volumes[key].shape != volumes["t1"].shape:
            raise UserError(f"packaged template map {key!r} is not on the T1 grid; reinstall medseg-attn")
    t1, gm, wm = volumes["t1"], volumes["gm"] / np.float32(255.0), volumes["wm"] / np.float32(255.0)
    for array in (t1, gm, wm, affine):
        array.flags.writeable = False  # shared by every caller of the cache
    return t1, gm, wm, affine


def _read_resource(key: str) -> nib.Nifti1Image:
    """Read ``mni152_{key}.nii.xz`` (or a plain ``.nii.gz``) from the package resources."""
    folder = resources.files(RESOURCE_PACKAGE)
    packed = folder / f"mni152_{key}.nii.xz"
    if packed.is_file():
        try:
            return nib.Nifti1Image.from_bytes(lzma.decompress(packed.read_bytes()))
        except (lzma.LZMAError, ValueError) as error:
            raise UserError(f"{packed}: damaged template file ({error}); reinstall medseg-attn") from None
    plain = folder / f"mni152_{key}.nii.gz"
    if plain.is_file():
        with resources.as_file(plain) as path:
            image = nib.load(str(path))
            return nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header)
    raise FileNotFoundError(
        f"{packed}: packaged MNI152 template not found; reinstall medseg-attn or run scripts/make_demo_resources.py"
    )


def load_template() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load the packaged MNI152 2009a template (1 mm, RAS, skull-stripped, cropped to the brain).

    Returns:
        ``(t1, gm, wm, affine)``: ``t1`` float32 (X, Y, Z) in the stored units (0..255, brain only, zero
        outside), ``gm`` and ``wm`` float32 (X, Y, Z) probabilities in [0, 1], ``affine`` the 4x4 voxel-to-world
        (RAS mm) matrix. The arrays are fresh copies the caller may modify.
    """
    t1, gm, wm, affine = _template_cached()
    return t1.copy(), gm.copy(), wm.copy(), affine.copy()


def output_grid(spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """The isotropic RAS grid of ``spacing`` mm that covers the template's field of view.

    The grid is centred on the template's world bounding box (voxel centres); at 1 mm it is the template grid.

    Returns:
        ``(shape, affine)``: the grid's (X, Y, Z) shape and 4x4 voxel-to-world affine.
    """
    try:
        value = float(spacing)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(spacing, bool) or not (math.isfinite(value) and 0.25 <= value <= 10.0):
        raise UserError(f"spacing={spacing!r}: expected a voxel size in mm between 0.25 and 10")
    spacing = value
    t1, _, _, affine = _template_cached()
    corners = np.array([[i, j, k, 1.0] for i in (0, t1.shape[0] - 1) for j in (0, t1.shape[1] - 1)
                        for k in (0, t1.shape[2] - 1)])
    world = corners @ affine.T
    low, high = world[:, :3].min(axis=0), world[:, :3].max(axis=0)
    shape = tuple(int(math.floor((h - lo) / spacing + 1e-6)) + 1 for lo, h in zip(low, high, strict=True))
    origin = (low + high) / 2 - (np.array(shape) - 1) * spacing / 2
    out_affine = np.diag([spacing, spacing, spacing, 1.0])
    out_affine[:3, 3] = origin
    return shape, out_affine  # type: ignore[return-value]


@dataclass(frozen=True)
class DemoCase:
    """One generated case: ``image`` int16 (X, Y, Z), ``label`` uint8 (X, Y, Z), ``affine`` 4x4 (RAS mm)."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    seed: int


def _uniform(generator: torch.Generator, low: float, high: float, size: tuple[int, ...] = ()) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator, dtype=torch.float64)


def _gaussian_blur(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of each channel of (C, X, Y, Z) with ``sigma`` voxels, edges replicated."""
    if sigma <= 0:
        return volume
    # scipy's separable filter is several times faster on CPU than a grouped conv3d
    blurred = ndimage.gaussian_filter(volume.numpy(), sigma=(0, sigma, sigma, sigma), mode="nearest", truncate=3.0)
    return torch.from_numpy(blurred)


def _smooth_random_field(
    generator: torch.Generator, channels: int, control_points: int, shape: tuple[int, int, int]
) -> torch.Tensor:
    """A smooth random field (C, X, Y, Z) with max |value| 1 (over channels' vector norm).

    Random values on a coarse grid of ``control_points`` per axis are upsampled to a small intermediate grid,
    Gaussian-smoothed (no kinks at the control points), normalised, then upsampled linearly to ``shape``.
    """
    coarse = torch.randn((1, channels, control_points, control_points, control_points), generator=generator)
    steps = 4
    middle = tuple(steps * (control_points - 1) + 1 for _ in range(3))
    field = F.interpolate(coarse, size=middle, mode="trilinear", align_corners=True)[0]  # (C, m, m, m)
    field = _gaussian_blur(field, sigma=steps / 2)
    field = field / field.norm(dim=0).max().clamp_min(1e-6)
    return F.interpolate(field[None], size=shape, mode="trilinear", align_corners=True)[0]  # (C, X, Y, Z)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """3x3 rotation from three angles in radians (about x, then y, then z)."""
    cx, cy, cz = (math.cos(float(a)) for a in angles)
    sx, sy, sz = (math.sin(float(a)) for a in angles)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return rz @ ry @ rx


@functools.lru_cache(maxsize=4)
def _template_tensor(spacing: float) -> torch.Tensor:
    """Template maps (1, 3, X, Y, Z) = T1 / 255, GM, WM, pre-smoothed against aliasing for a ``spacing`` grid."""
    t1, gm, wm, _ = _template_cached()
    volume = torch.from_numpy(np.stack([t1 / np.float32(255.0), gm, wm]))  # (3, X, Y, Z)
    # template voxels are 1 mm; a grid of s mm needs about sigma = (s - 1) / 2 template voxels (as skimage does)
    sigma = max(0.0, (spacing - 1.0) / 2.0)
    return _gaussian_blur(volume, sigma).unsqueeze(0).contiguous()


@functools.lru_cache(maxsize=1)
def _brain_centre() -> np.ndarray:
    """World (RAS mm) centre of mass of the GM + WM probability."""
    _, gm, wm, affine = _template_cached()
    mass = gm + wm
    indices = [np.arange(n, dtype=np.float64) for n in mass.shape]
    total = float(mass.sum())
    centre = [float((mass.sum(axis=tuple(a for a in range(3) if a != axis)) * indices[axis]).sum()) / total
              for axis in range(3)]
    return (affine @ np.array([*centre, 1.0]))[:3]


def generate_case(seed: int, spacing: float, deform: bool = True, appearance: bool = True) -> DemoCase:
    """Generate one random variant of the template on the isotropic ``spacing`` mm grid.

    Args:
        seed: random seed; the same seed and spacing give the same case.
        spacing: voxel size in mm of the output grid (see ``output_grid``).
        deform: apply the random affine and elastic deformation (False: the template resampled as is).
        appearance: apply bias field, gamma, scale and noise (False: T1 / 255 * 1000, no noise).

    Returns:
        The case: ``image`` int16 (X, Y, Z), ``label`` uint8 (X, Y, Z) in {0, 1, 2}, RAS ``affine``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    t1, gm, wm, out_affine = deformed_template(generator, spacing, deform)
    label = tissue_label(gm, wm)
    intensity = t1.clamp(0, 1)
    if appearance:
        intensity = mri_appearance(generator, intensity, label > 0)
    else:
        intensity = intensity * 1000.0
    image = intensity.round().clamp(0, np.iinfo(np.int16).max).to(torch.int16)
    return DemoCase(image.numpy(), label.numpy(), out_affine, int(seed))


def tissue_label(gm: torch.Tensor, wm: torch.Tensor) -> torch.Tensor:
    """``argmax(background, gm, wm)`` as uint8 0/1/2, first class on ties; comparisons beat a strided argmax
    (docs/benchmarks.md)."""
    background = (1.0 - gm - wm).clamp_min(0.0)
    is_grey = gm > background
    is_white = wm > torch.maximum(background, gm)
    return is_grey.to(torch.uint8).masked_fill_(is_white, 2)  # (X, Y, Z)


def mri_appearance(generator: torch.Generator, intensity: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """A contrast in [0, 1] as an MRI scanner would give it: gamma, a smooth bias field, a global scale and Rician
    noise relative to the mean intensity inside ``brain``."""
    shape = tuple(intensity.shape)
    gamma = float(_uniform(generator, *GAMMA_RANGE))
    amplitude = float(_uniform(generator, *BIAS_AMPLITUDE))
    bias = torch.exp(_smooth_random_field(generator, 1, 4, shape)[0] * math.log1p(amplitude))
    scale = float(_uniform(generator, *INTENSITY_SCALE))
    intensity = intensity.pow(gamma) * bias * scale
    brain_mean = float(intensity[brain].mean()) if bool(brain.any()) else scale / 2
    sigma = float(_uniform(generator, *NOISE_FRACTION)) * brain_mean
    real = intensity + sigma * torch.randn(shape, generator=generator)
    imaginary = sigma * torch.randn(shape, generator=generator)
    return torch.sqrt(real * real + imaginary * imaginary)  # Rician magnitude


def deformed_template(generator: torch.Generator, spacing: float, deform: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """The template's T1 / 255, GM and WM maps (X, Y, Z) each, sampled through a random affine + elastic
    deformation (none without ``deform``) onto the isotropic ``spacing`` mm grid, and that grid's affine."""
    shape, out_affine = output_grid(spacing)
    _, _, _, template_affine = _template_cached()
    template = _template_tensor(float(spacing))  # (1, 3, X', Y', Z')
    template_shape = template.shape[2:]

    # world -> template voxel map for the output grid: idx = inv(A_t) @ phi(A_out @ ijk)
    # phi(w) = c + M (w - c) + t + u(w): the sampling position in the template for output point w
    matrix = torch.eye(4, dtype=torch.float64)
    if deform:
        centre = torch.from_numpy(_brain_centre())
        angles = _uniform(generator, -1, 1, (3,)) * math.radians(MAX_ROTATION_DEGREES)
        scales = _uniform(generator, *SCALE_RANGE, (3,))
        translation = _uniform(generator, -1, 1, (3,)) * MAX_TRANSLATION_MM
        linear = _rotation(angles) @ torch.diag(scales)
        matrix[:3, :3] = linear
        matrix[:3, 3] = centre + translation - linear @ centre
    # fold grid_sample's normalisation (align_corners=True: voxel 0 -> -1, voxel n-1 -> +1) into the same map
    normalise = np.diag([*(2.0 / (n - 1) for n in template_shape), 1.0])
    normalise[:3, 3] = -1.0
    world_to_grid = torch.from_numpy(normalise @ np.linalg.inv(template_affine))  # (4, 4)
    to_grid = world_to_grid @ matrix @ torch.from_numpy(out_affine)  # output voxel -> normalised template position
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    broadcast = (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    grid = torch.empty((1, *shape, 3), dtype=torch.float32)  # (1, X, Y, Z, 3)
    if deform:
        control_points = int(torch.randint(ELASTIC_CONTROL_POINTS[0], ELASTIC_CONTROL_POINTS[1] + 1, (1,),
                                           generator=generator))
        magnitude = float(_uniform(generator, *ELASTIC_MAX_MM))
        displacement = _smooth_random_field(generator, 3, control_points, shape) * magnitude  # (3, X, Y, Z) mm
        displacement_to_grid = world_to_grid[:3, :3].to(torch.float32)
    # grid_sample reads the last axis as (W, H, D) = template axes (Z, Y, X)
    for grid_axis, template_axis in enumerate((2, 1, 0)):
        row = to_grid[template_axis].tolist()
        coordinate = row[0] * broadcast[0] + row[1] * broadcast[1] + row[2] * broadcast[2] + row[3]
        grid[0, ..., grid_axis] = coordinate.to(torch.float32)
        if deform:
            weights = displacement_to_grid[template_axis]
            grid[0, ..., grid_axis] += (displacement * weights[:, None, None, None]).sum(dim=0)
    sampled = F.grid_sample(template, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    t1, gm, wm = sampled[0], sampled[1].clamp(0, 1), sampled[2].clamp(0, 1)  # (X, Y, Z) each
    return t1, gm, wm, out_affine


def check_build_arguments(output_dir: str | Path, train_cases: int, test_cases: int, seed: int,
                          train_spacing: float, test_spacing: float, what: str) -> Path:
    """The arguments of a demo dataset builder checked before any work; returns the output folder.

    Raises:
        UserError: a count, seed or spacing out of range; ``output_dir`` is a file (``what`` names the dataset).
    """
    for name, value in (("train_cases", train_cases), ("test_cases", test_cases)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= TEST_SEED_OFFSET:
            raise UserError(f"{name}={value!r}: expected an integer between 0 and {TEST_SEED_OFFSET}")
    if train_cases + test_cases == 0:
        raise UserError("train_cases=0 and test_cases=0: nothing to build")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed={seed!r}: expected a non-negative integer")
    output_grid(train_spacing)  # validates the spacings before any work
    output_grid(test_spacing)
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a folder; expected an output folder for the {what} dataset")
    return root


def build_demo_dataset(
    output_dir: str | Path,
    train_cases: int = 20,
    test_cases: int = 4,
    seed: int = 0,
    train_spacing: float = 2.0,
    test_spacing: float = 1.0,
    progress: bool = True,
) -> Path:
    """Write the brain-tissue demo dataset (Medical Segmentation Decathlon layout) into ``output_dir``.

    Layout: ``imagesTr/brain_000.nii.gz`` + ``labelsTr/brain_000.nii.gz`` (training cases, ``train_spacing`` mm),
    ``imagesTs/brain_100.nii.gz`` + ``labelsTs/brain_100.nii.gz`` (held-out cases, ``test_spacing`` mm) and
    ``dataset.json`` (written last). Images are int16 T1-weighted MRI, labels uint8 (0 background, 1 grey
    matter, 2 white matter); every grid is isotropic RAS over the template's field of view.

    Each case is the template under a random affine (rotation up to 10 degrees per axis, scaling 0.9-1.1 per
    axis, translation up to 5 mm, about the brain centre) and a smooth elastic field (5-8 control points per
    axis, up to 3-6 mm), with a bias field (+-15-30 %), gamma 0.7-1.5, random scale and Rician noise (1-4 % of
    the brain intensity). Training case ``i`` uses seed ``seed + i``, held-out case ``j`` uses
    ``seed + 10000 + j``, so held-out cases are never training cases. Files are written atomically; existing
    files of the same names are replaced.

    Args:
        output_dir: folder to create or fill.
        train_cases: number of training cases (0..10000).
        test_cases: number of held-out cases (0..10000).
        seed: base random seed.
        train_spacing: isotropic voxel size (mm) of the training cases.
        test_spacing: isotropic voxel size (mm) of the held-out cases.
        progress: show a tqdm progress bar.

    Returns:
        Path of the written ``dataset.json``.

    Raises:
        ValueError: a count, seed or spacing out of range; ``output_dir`` is a file.
    """
    root = check_build_arguments(output_dir, train_cases, test_cases, seed, train_spacing, test_spacing, "demo")

    first_test_id = max(100, int(math.ceil(train_cases / 100)) * 100)
    width = max(3, len(str(first_test_id + test_cases - 1)))
    plan = [("Tr", i, seed + i, float(train_spacing)) for i in range(train_cases)]
    plan += [("Ts", first_test_id + j, seed + TEST_SEED_OFFSET + j, float(test_spacing)) for j in range(test_cases)]
    logger.info("building demo dataset in %s: %d training cases at %g mm, %d held-out cases at %g mm",
                root, train_cases, train_spacing, test_cases, test_spacing)

    from tqdm.auto import tqdm  # a dependency; imported here to keep module import light

    start = time.perf_counter()
    training, test = [], []
    for split, case_id, case_seed, spacing in tqdm(plan, desc="demo cases", unit="case", disable=not progress):
        name = f"brain_{case_id:0{width}d}.nii.gz"
        case = generate_case(case_seed, spacing)
        write_nifti(case.image, affine=case.affine, path=root / f"images{split}" / name)
        write_nifti(case.label, affine=case.affine, path=root / f"labels{split}" / name)
        fractions = np.bincount(case.label.ravel(), minlength=3) / case.label.size
        logger.debug("images%s/%s: seed %d, shape %s, intensity %d..%d, label fractions %s", split, name, case_seed,
                     case.image.shape, case.image.min(), case.image.max(), np.round(fractions, 3).tolist())
        if split == "Tr":
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")

    description = (
        "Brain tissue segmentation (grey matter, white matter) on T1-weighted MRI: random affine and elastic "
        "deformations of the MNI ICBM152 2009a symmetric template with bias field, contrast change and Rician "
        f"noise. Training cases at {train_spacing:g} mm, held-out cases at {test_spacing:g} mm (labels in "
        f"labelsTs), isotropic RAS. Built by medseg_attn.demo_data with seed {seed}."
    )
    dataset = {
        "name": "MNI152Brain",
        "description": description,
        "reference": REFERENCE,
        "licence": LICENCE,
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {str(k): v for k, v in LABELS.items()},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    path = root / "dataset.json"
    atomic_write_text(path, json.dumps(dataset, indent=2) + "\n")
    logger.info("demo dataset written to %s in %.1f s", path, time.perf_counter() - start)
    return path
