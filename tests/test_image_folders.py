"""Image folders as users have them: one bad file among thousands neither stops a run nor shrinks it silently.

Every image the authors' preprocessing accepts is used (any size, grayscale, CMYK, RGBA, 16-bit); files that
cannot be read are skipped, counted and named in the report and on the terminal, or refused with --strict,
in ``validate --images``, ``bench --images`` and ``export --int8 --calib`` alike.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_checks import assert_refused, run_cli, tree
from real_images import AWKWARD_FILES, write_awkward_folder

from eca_deploy.errors import EcaDeployError
from eca_deploy.image_folders import ImageFolderInputs
from eca_deploy.preprocess import Preprocessing

SIZE = 64
READABLE = sorted(name for name, readable in AWKWARD_FILES.items() if readable)
UNREADABLE = sorted(name for name, readable in AWKWARD_FILES.items() if not readable)
MODEL = ["eca_resnet18", "--input-size", str(SIZE), "--num-classes", "10"]


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    return write_awkward_folder(tmp_path_factory.mktemp("awkward") / "images")


def _inputs(folder, **kwargs) -> ImageFolderInputs:
    return ImageFolderInputs(folder, Preprocessing.from_zoo().for_input_size(SIZE), batch_size=4, **kwargs)


def test_every_image_the_preprocessing_accepts_is_used_and_the_rest_counted(awkward):
    images = _inputs(awkward)
    assert images.skipped.count == 1  # the text file, found by its header before any decoding
    batches = list(images)
    assert [len(batch.images) for batch in batches] == [4, 2]  # 8 files, the truncated one found when decoded
    decoded = np.concatenate([batch.images for batch in batches])
    assert decoded.shape == (len(READABLE), 3, SIZE, SIZE) and np.isfinite(decoded).all()
    assert images.skipped.count == len(UNREADABLE)
    assert sorted(item["file"].rsplit("/", 1)[1] for item in images.skipped.first) == UNREADABLE
    described = images.describe()
    assert described["samples"] == len(READABLE) and described["skipped_files"]["count"] == len(UNREADABLE)


def test_sixteen_bit_images_look_like_their_eight_bit_twin(awkward):
    preprocessing = Preprocessing.from_zoo().for_input_size(SIZE)
    np.testing.assert_array_equal(preprocessing(awkward / "deep.png"), preprocessing(awkward / "gray.png"))


def test_benchmark_batches_cycle_past_unreadable_files(awkward):
    images = _inputs(awkward)
    for index in range(4):
        assert images.batch_of(5, index).images.shape == (5, 3, SIZE, SIZE)
    assert images.skipped.count == len(UNREADABLE)


def test_strict_refuses_the_folder_at_the_first_unreadable_file(awkward):
    with pytest.raises(EcaDeployError, match=r"cannot read image .*notes.jpg: .*--strict"):
        _inputs(awkward, strict=True)


def test_validate_names_what_it_skipped_in_the_report_and_on_the_terminal(awkward, tmp_path):
    result = run_cli("eca-validate", *MODEL, "-b", "torch-cpu", "--images", awkward, "-q", "-o", tmp_path / "acc")
    assert result.returncode == 0, result.stderr[-3000:]
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert f"skipped {len(UNREADABLE)} unreadable files in {awkward}" in warning
    assert all(name in warning for name in UNREADABLE) and "--strict" in warning
    report = json.loads((tmp_path / "acc/accuracy.json").read_text())
    assert report["inputs"]["samples"] == len(READABLE) and report["inputs"]["skipped_files"]["count"] == 2
    assert report["warnings"] == [warning.removeprefix("warning: ")]
    assert report["accuracy"]["reference"]["label_accuracy"] is None  # flat folder
    assert "**warning**: skipped 2 unreadable files" in (tmp_path / "acc/accuracy.md").read_text()

    strict = run_cli("eca-validate", *MODEL, "-b", "torch-cpu", "--images", awkward, "--strict", "-o", tmp_path / "s")
    assert_refused(strict, r"cannot read image .*notes.jpg: .*--strict refuses a folder with unreadable files")
    assert not (tmp_path / "s").exists()
    assert_refused(run_cli("eca-validate", *MODEL, "--strict", "-o", tmp_path / "s"),
                   r"--strict applies to an image folder: add --images DIR")


def test_bench_with_images_reports_what_it_skipped(awkward, tmp_path):
    result = run_cli("eca-bench", *MODEL, "-b", "torch-cpu", "--images", awkward, "--batch-sizes", "4",
                     "--iterations", "3", "--duration", "0", "--warmup-seconds", "0", "--no-plots", "-q",
                     "-o", tmp_path / "lat")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "lat/latency.json").read_text())
    assert report["inputs"]["skipped_files"]["count"] == len(UNREADABLE)
    assert any(w.startswith(f"skipped {len(UNREADABLE)} unreadable files") for w in report["warnings"])


def test_int8_calibration_takes_small_images_and_skips_unreadable_ones(awkward, tmp_path):
    """A 102 x 102 photograph and a 1 x 1 PNG calibrate like any image (resized as the authors' transform does);
    the unreadable files are counted in the report."""
    result = run_cli("eca-export", "eca_resnet18", "--input-size", "224", "--exporter", "legacy", "--no-fuse",
                     "--int8", "--calib", awkward, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: skipped {len(UNREADABLE)} unreadable files in {awkward}" in result.stderr
    calibration = json.loads((tmp_path / "out/eca_resnet18.int8.report.json").read_text())["quantization"]["calibration"]
    assert calibration["samples"] == len(READABLE) and calibration["skipped_files"]["count"] == len(UNREADABLE)

    before = tree(tmp_path)
    strict = run_cli("eca-export", "eca_resnet18", "--int8", "--calib", awkward, "--strict", "-o", tmp_path / "s")
    assert_refused(strict, r"cannot read image .*notes.jpg")
    assert tree(tmp_path) == before
