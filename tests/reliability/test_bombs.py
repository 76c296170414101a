"""Decompression and alias bombs: refused from the header (or the YAML's expanded size) before any memory is spent.

The NIfTI bomb is real: a 348-byte header declaring 1600^3 uint8 voxels and a gzip stream of 4 096 000 000 zero
bytes (repeated gzip members of 64 MiB of zeros, valid gzip), about 4 MB on disk. Before the guard, ``predict``
held 8.5 GB and ``inspect`` 12.5 GB.
"""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import assert_one_line_error
from reliability_helpers import run_limited, volume

from medseg_attn.config import ConfigError, load_config
from medseg_attn.io.pictures import read_image
from medseg_attn.io.volumes import read_geometry

SIDE = 1600
CHUNK = 64 << 20


def gzip_bomb(path: Path, side: int = SIDE) -> Path:
    """A .nii.gz declaring side^3 uint8 voxels, all zero, fully present in the gzip stream."""
    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.uint8)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    total = side ** 3
    zeros = gzip.compress(b"\0" * CHUNK, compresslevel=9)
    with path.open("wb") as handle:
        handle.write(gzip.compress(header.binaryblock + b"\0" * 4))
        for _ in range(total // CHUNK):
            handle.write(zeros)
        handle.write(gzip.compress(b"\0" * (total % CHUNK)))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = gzip_bomb(tmp_path_factory.mktemp("bomb") / "bomb.nii.gz")
    assert path.stat().st_size < 8 << 20 and nib.load(str(path)).shape == (SIDE,) * 3
    return path


@pytest.mark.parametrize("command", ["inspect", "predict"])
def test_gzip_bomb_is_one_line_within_10_s_and_2_gib(command, bomb, segmentation_model, tmp_path):
    args = ["inspect", str(bomb)] if command == "inspect" else [
        "-q", "predict", "--model", str(segmentation_model), "--input", str(bomb), "--output", str(tmp_path / "out")]
    started = time.perf_counter()
    result, peak = run_limited(*args)
    seconds = time.perf_counter() - started
    assert_one_line_error(result, str(bomb), "1600 x 1600 x 1600", "MEDSEG_ATTN_MAX_VOXELS")
    assert not (tmp_path / "out").exists()
    assert seconds < 10, f"{command} took {seconds:.1f} s"
    assert 0 < peak < 2 * 2 ** 30, f"peak resident memory {peak / 2 ** 30:.2f} GiB"


def test_a_bomb_inside_a_batch_folder_is_a_failed_case(bomb, segmentation_model, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "bomb.nii.gz").symlink_to(bomb)
    volume(folder / "good.nii.gz")
    result, peak = run_limited("-q", "predict", "--model", str(segmentation_model), "--input", str(folder),
                               "--output", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("medseg-attn: failed:")]
    assert len(failed) == 1 and "1600 x 1600 x 1600" in failed[0]
    assert (tmp_path / "out" / "good.nii.gz").is_file() and 0 < peak < 2 * 2 ** 30


def test_the_limit_is_configurable(tmp_path):
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.float32), np.eye(4)), str(small))
    result, _ = run_limited("--max-voxels", "999", "inspect", str(small))
    assert_one_line_error(result, "10 x 10 x 10 = 1000 voxels", "limit of 999")
    result, _ = run_limited("inspect", str(small), env={**os.environ, "MEDSEG_ATTN_MAX_VOXELS": "999"})
    assert_one_line_error(result, "limit of 999")
    assert run_limited("--max-voxels", "1000", "inspect", str(small))[0].returncode == 0


def test_every_reader_checks_the_header_first(bomb, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="1600 x 1600 x 1600"):
        read_geometry(bomb)
    with pytest.raises(ValueError, match="1600 x 1600 x 1600"):  # classification's reader
        read_image(bomb)
    monkeypatch.setenv("MEDSEG_ATTN_MAX_VOXELS", "100")
    import SimpleITK as sitk

    nrrd = tmp_path / "v.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 5, 5), np.float32)), str(nrrd))
    from medseg_attn.io.readers import VolumeReader

    with pytest.raises(ValueError, match="5 x 5 x 5"):
        VolumeReader().read(nrrd)
    with pytest.raises(ValueError, match="5 x 5 x 5"):
        read_geometry(nrrd)


ALIAS_BOMB = """a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
train:
  lr: *i
"""


NESTED = "[&a [1,1,1,1,1,1,1,1,1,1], " + ", ".join(
    f"&{name} [{', '.join(['*' + previous] * 10)}]" for previous, name in zip("abcde", "bcdef")) + "]"


def test_yaml_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 500
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert time.perf_counter() - started < 2
    assert "alias" in str(caught.value) and len(str(caught.value)) < 300
    with pytest.raises(ConfigError, match="alias"):
        load_config(overrides=["train.lr=" + NESTED])


def test_yaml_alias_bomb_on_the_command_line_is_bounded(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    result, peak = run_limited("train", "--config", str(path), "--output", str(tmp_path / "run"))
    assert_one_line_error(result, str(path), "alias")
    assert len(result.stderr) < 2000 and 0 < peak < 2 * 2 ** 30
    assert not (tmp_path / "run").exists()


def test_a_big_but_honest_shared_value_stays_short_in_messages():
    """Anchors used a few times are fine; a wrong value built from them is shown cut short."""
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=["train.lr=[&a [1,2,3,4,5,6,7,8,9,10], *a, *a, *a]"])
    assert len(str(caught.value)) < 200
