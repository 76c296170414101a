"""ImageFolder / CSV listings, splits, checks and image reading, on real files written with Pillow/nibabel/SimpleITK."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg_attn.classification.listings import (
    check_images,
    list_csv,
    list_image_folder,
    load_image_sets,
    stratified_split,
)
from medseg_attn.classification.transforms import ImagePreprocessing, classification_transforms
from medseg_attn.io.pictures import read_image, to_channels


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def folder(root: Path, layout: dict[str, int], size=(8, 8)) -> Path:
    for name, count in layout.items():
        for i in range(count):
            png(root / name / f"{i}.png", np.full(size, 10 * i, np.uint8))
    return root


def test_classes_sorted_to_indices_nested_images_and_skips(tmp_path, caplog):
    root = folder(tmp_path / "data", {"zebra": 2, "apple": 1, "Mango": 1})
    png(root / "apple" / "sub" / "deep.png", np.zeros((8, 8), np.uint8))  # images may sit in sub-folders
    (root / ".DS_Store").write_text("x")
    (root / "apple" / ".hidden.png").write_bytes(b"x")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "zebra" / "notes.txt").write_text("x")
    (root / "README.md").write_text("x")
    with caplog.at_level(logging.WARNING):
        listing = list_image_folder(root)
    assert listing.classes == ["Mango", "apple", "zebra"]  # sorted as strings, as torchvision does
    names = {s["name"]: s["label"] for s in listing.samples}
    assert names == {"Mango/0.png": 0, "apple/0.png": 1, "apple/sub/deep.png": 1, "zebra/0.png": 2, "zebra/1.png": 2}
    assert listing.counts() == [1, 2, 2]
    text = caplog.text
    assert "skipped 3 hidden" in text and ".DS_Store" in text
    assert "skipped 2 files that are not images" in text and "notes.txt" in text


def test_empty_class_folder_and_no_classes_are_errors(tmp_path):
    root = folder(tmp_path / "data", {"a": 2})
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"data/b: class folder 'b' holds no images"):
        list_image_folder(root)
    flat = tmp_path / "flat"
    png(flat / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="holds no class folders"):
        list_image_folder(flat)
    with pytest.raises(FileNotFoundError, match="missing: image folder not found"):
        list_image_folder(tmp_path / "missing")


def test_unreadable_images_are_named_all_at_once(tmp_path):
    root = folder(tmp_path / "data", {"a": 2, "b": 2})
    (root / "b" / "broken.png").write_text("not a png")
    listing = list_image_folder(root)
    with pytest.raises(ValueError, match=r"b/broken.png: not a readable image"):
        check_images(listing.samples, resize=False)
    (root / "a" / "also.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ValueError, match=r"2 unreadable images:\n  .*also.jpg.*\n  .*broken.png"):
        check_images(list_image_folder(root).samples, resize=False)
    # a PNG whose header is fine but whose data is cut short fails when decoded, naming the file
    good = png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png: image data cannot be decoded"):
        read_image(truncated)


def test_mixed_sizes_need_a_resize_setting_and_2d_3d_do_not_mix(tmp_path):
    root = folder(tmp_path / "data", {"a": 2})
    png(root / "b" / "big.png", np.zeros((12, 10), np.uint8))
    samples = list_image_folder(root).samples
    with pytest.raises(ValueError, match=r"big.png: image size 12x10 differs from 8x8 .*set data.image_size"):
        check_images(samples, resize=False)
    assert len(check_images(samples, resize=True)) == 3
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), str(root / "b" / "vol.nii.gz"))
    with pytest.raises(ValueError, match="vol.nii.gz: is a 3D image .* is 2D"):
        check_images(list_image_folder(root).samples, resize=True)


def test_csv_listing(tmp_path):
    folder(tmp_path / "images", {"x": 3})
    listing_path = tmp_path / "list.csv"
    listing_path.write_text("path,label\nimages/x/0.png,10\nimages/x/1.png,2\n" + f"{tmp_path}/images/x/2.png,2\n")
    listing = list_csv(listing_path)
    assert listing.classes == ["2", "10"]  # integer labels sort numerically
    assert [s["label"] for s in listing.samples] == [1, 0, 0]
    assert Path(listing.samples[0]["image"]) == (tmp_path / "images/x/0.png").resolve()
    (tmp_path / "bad.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(ValueError, match="bad.csv: expected a header with 'path' and 'label'"):
        list_csv(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("path,label\nimages/x/0.png,a\nimages/x/9.png,b\n")
    with pytest.raises(FileNotFoundError, match=r"images/x/9.png: image not found \(listed in .*missing.csv, line 3\)"):
        list_csv(tmp_path / "missing.csv")
    (tmp_path / "other.csv").write_text("path,label\nimages/x/0.png,a\nimages/x/1.png,b\n")
    with pytest.raises(ValueError, match="line 3: label 'b' is not one of the model's classes"):
        list_csv(tmp_path / "other.csv", classes=["a"])


def test_split_layout_and_stratified_split(tmp_path):
    root = tmp_path / "data"
    folder(root / "train", {"cat": 10, "dog": 5})
    folder(root / "val", {"cat": 2})  # a validation set may lack a class
    folder(root / "test", {"cat": 1, "dog": 1})
    sets = load_image_sets(root)
    assert sets.train.classes == ["cat", "dog"] and len(sets.train.samples) == 15
    assert sets.val.counts() == [2, 0] and sets.test.counts() == [1, 1]
    folder(root / "val", {"bird": 1})
    with pytest.raises(ValueError, match="class folder 'bird' is not one of the model's classes"):
        load_image_sets(root)
    train, val = stratified_split(sets.train.samples, 0.2, seed=3)
    assert sorted(s["label"] for s in val) == [0, 0, 1]  # 20 % of each class, at least one
    assert not {s["name"] for s in train} & {s["name"] for s in val}
    assert stratified_split(sets.train.samples, 0.2, seed=3) == (train, val)  # deterministic
    with pytest.raises(ValueError, match="classification needs at least 2"):
        load_image_sets(folder(tmp_path / "one", {"only": 2}))


def test_read_2d_modes_keep_values_and_orientation(tmp_path):
    gray16 = np.arange(6 * 7, dtype=np.uint16).reshape(6, 7) * 1500
    array, info = read_image(png(tmp_path / "g16.png", gray16))
    assert array.shape == (1, 6, 7) and info.max_value == 65535 and info.channels == 1
    np.testing.assert_array_equal(array[0], gray16)  # rows first, values exact
    rgb = np.zeros((5, 9, 3), np.uint8)
    rgb[1, 7] = (200, 10, 30)
    array, info = read_image(png(tmp_path / "rgb.png", rgb))
    assert array.shape == (3, 5, 9) and tuple(array[:, 1, 7]) == (200, 10, 30) and info.max_value == 255
    rgba = np.dstack([rgb, np.full((5, 9), 128, np.uint8)])
    assert read_image(png(tmp_path / "rgba.png", rgba))[0].shape == (3, 5, 9)  # alpha dropped
    Image.fromarray(gray16).save(tmp_path / "g16.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "g16.tif")[0][0], gray16)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    assert read_image(tmp_path / "rgb.jpg")[0].shape == (3, 5, 9)
    gray = to_channels(read_image(tmp_path / "rgb.png")[0], 1)
    assert gray.shape == (1, 5, 9) and gray[0, 1, 7] == pytest.approx(0.299 * 200 + 0.587 * 10 + 0.114 * 30, abs=1e-3)
    assert to_channels(array[:1], 3).shape == (3, 5, 9)


def test_read_dicom_and_volumes(tmp_path):
    import SimpleITK as sitk

    pixels = (np.arange(12 * 10).reshape(12, 10) * 3).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(tmp_path / "slice.dcm"))
    array, info = read_image(tmp_path / "slice.dcm")
    assert info.shape == (12, 10) and array.shape == (1, 12, 10)
    np.testing.assert_array_equal(array[0], pixels)
    volume = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    # stored LAS (x flipped): read back in RAS, so the first x index is the last stored one
    nib.save(nib.Nifti1Image(volume, np.diag([-2.0, 2.0, 2.0, 1.0])), str(tmp_path / "las.nii.gz"))
    array, info = read_image(tmp_path / "las.nii.gz")
    assert info.shape == (4, 5, 6) and array.shape == (1, 4, 5, 6)
    np.testing.assert_allclose(array[0], volume[::-1])
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.int16), np.eye(4)), str(tmp_path / "two.nii.gz"))
    array, info = read_image(tmp_path / "two.nii.gz")
    assert array.shape == (2, 4, 5, 6) and info.channels == 2 and info.max_value == 32767
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 1), np.float32), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    assert read_image(tmp_path / "flat.nii.gz")[1].shape == (4, 5)  # one slice: a 2D image


def test_transform_chain_resizes_scales_and_converts(tmp_path):
    from monai import transforms as mt

    path = png(tmp_path / "g16.png", np.full((10, 14), 65535, np.uint16))
    chain = mt.Compose(classification_transforms(ImagePreprocessing(2, 3, (8, 8), "scale"), None))
    image = chain({"image": str(path)})["image"]
    assert image.shape == (3, 8, 8)
    np.testing.assert_allclose(image.numpy(), 1.0, atol=1e-5)  # 16-bit range divided by 65535, gray -> RGB
    chain = mt.Compose(classification_transforms(ImagePreprocessing(2, 1, (8, 8), "zscore"), None))
    path = png(tmp_path / "ramp.png", np.arange(100, dtype=np.uint8).reshape(10, 10))
    image = chain({"image": str(path)})["image"]
    assert abs(float(image.mean())) < 1e-4 and float(image.std()) == pytest.approx(1.0, abs=0.1)


def test_demo_slices_are_labelled_by_brain_level(tmp_path):
    from medseg_attn.classification.demo_data import CLASSES, build_slice_dataset

    root = build_slice_dataset(tmp_path / "demo", train_cases=1, val_cases=1, test_cases=1, slices_per_class=1,
                               progress=False)
    sets = load_image_sets(root)
    assert sets.train.classes == list(CLASSES)
    for listing in (sets.train, sets.val, sets.test):
        assert listing.counts() == [1] * len(CLASSES)
    brains = {Path(s["name"]).name.split("_")[0] for s in sets.train.samples + sets.val.samples + sets.test.samples}
    assert len(brains) == 3  # one random brain per split, never shared
    heights = [int(Path(s["name"]).stem.split("_z")[1]) for s in sorted(sets.train.samples, key=lambda s: s["label"])]
    assert heights == sorted(heights)  # class order = inferior to superior
    array, info = read_image(sets.train.samples[0]["image"])
    assert info.max_value == 65535 and array.max() > 255  # 16-bit MRI values
