"""Generator version 2's gamma-camera model and the realism report (malignet_bundle/data/camera.py, realism.py)."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from malignet_bundle.data.camera import FWHM_PER_SIGMA, GammaCamera
from malignet_bundle.data.phantom import HOT_SPOTS_V2
from malignet_bundle.data.realism import (
    REAL_REFERENCE,
    STATISTICS,
    body_mask,
    pelvis_width_px,
    radial_power_spectrum,
    realism_report,
    spectrum_falloff,
    view_statistics,
)
from malignet_bundle.data.synthesize import GENERATOR_VERSION, synthesize_study, write_dataset

from .conftest import run_script

SPACING = 2.26


def _point_source(shape=(129, 129), value=1000.0):
    image = np.zeros(shape, dtype=np.float32)
    image[shape[0] // 2, shape[1] // 2] = value
    return image


def _second_moment(image):
    rows, cols = np.indices(image.shape)
    total = image.sum()
    r = (rows * image).sum() / total
    c = (cols * image).sum() / total
    return float((((rows - r) ** 2 + (cols - c) ** 2) * image).sum() / total)


def test_collimator_resolution_grows_with_distance():
    camera = GammaCamera()
    distances = np.array([0.0, 50.0, 100.0, 200.0, 300.0])
    fwhm = camera.system_fwhm_mm(distances)
    assert np.all(np.diff(fwhm) > 0)
    assert fwhm[0] == pytest.approx(np.hypot(3.8, 1.5 * 45 / 35))
    assert 7.0 <= camera.system_fwhm_mm(100.0) <= 8.0  # LEHR system resolution at 10 cm
    near, far = camera.blur(_point_source(), 20.0, SPACING), camera.blur(_point_source(), 250.0, SPACING)
    assert _second_moment(far) > 2.0 * _second_moment(near)
    assert far.max() < 0.5 * near.max()
    # the blur is the stated Gaussian: variance 2 sigma^2 in 2-D
    sigma = camera.system_fwhm_mm(250.0) / FWHM_PER_SIGMA / SPACING
    assert _second_moment(far) == pytest.approx(2 * sigma**2, rel=0.02)
    # an extra blur adds in quadrature
    assert camera.system_fwhm_mm(100.0, extra_fwhm_mm=30.0) == pytest.approx(np.hypot(fwhm[2], 30.0))


def test_projection_conserves_counts_and_scatter_adds_its_fraction():
    camera = GammaCamera()
    layers = {0: _point_source(), 10: _point_source(value=500.0)}
    primary = camera.project(layers, gap_mm=40.0, spacing_mm=SPACING)
    assert primary.sum() == pytest.approx(1500.0, rel=1e-3)
    # a body: a uniform disc; scatter is 30 % of the detected counts and spills beyond the outline
    rows, cols = np.indices((400, 200))
    disc = (((rows - 200) / 120.0) ** 2 + ((cols - 100) / 50.0) ** 2 <= 1).astype(np.float32)
    detected = camera.add_scatter(disc, SPACING)
    scatter = detected - disc
    assert scatter.sum() / detected.sum() == pytest.approx(camera.scatter_fraction, rel=0.02)
    outside = ~ndimage.binary_dilation(disc > 0, iterations=5)
    assert detected[outside].mean() > 0 and detected[outside].max() > 0.01 * disc.max()
    assert np.array_equal(GammaCamera(scatter_fraction=0.0).add_scatter(disc, SPACING), disc)


def test_camera_rejects_impossible_settings():
    with pytest.raises(ValueError, match="scatter_fraction"):
        GammaCamera(scatter_fraction=1.0)
    with pytest.raises(ValueError, match="same length"):
        GammaCamera(scatter_fwhm_mm=(30.0,), scatter_weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="extra_fwhm_mm"):
        GammaCamera(extra_fwhm_mm=(20.0, 10.0))
    with pytest.raises(ValueError, match="no depth layers"):
        GammaCamera().project({}, 40.0, SPACING)


def test_version_2_is_the_deterministic_default_and_version_1_stays_available():
    a, b = synthesize_study([3, 1], "A", version=2), synthesize_study([3, 1], "A", version=2)
    c = synthesize_study([4, 1], "A", version=2)
    for view in ("anterior", "posterior"):
        np.testing.assert_array_equal(a.frames[view], b.frames[view])
        np.testing.assert_array_equal(a.masks[view], b.masks[view])
    assert a.acquisition == b.acquisition and a.generator_version == 2
    assert not np.array_equal(a.frames["anterior"], c.frames["anterior"])
    # the default is version 2, the gamma-camera generator's pixels
    assert GENERATOR_VERSION == 2
    default, v1 = synthesize_study([3, 1], "A"), synthesize_study([3, 1], "A", version=1)
    np.testing.assert_array_equal(default.frames["anterior"], a.frames["anterior"])
    assert v1.generator_version == 1 and not np.array_equal(v1.frames["anterior"], a.frames["anterior"])
    with pytest.raises(ValueError, match="version 1 has no camera"):
        synthesize_study([3, 1], "A", version=1, camera=GammaCamera())
    with pytest.raises(ValueError, match="unknown generator version 3"):
        synthesize_study([3, 1], "A", version=3)


def test_version_2_has_background_outside_the_body_and_real_hot_spot_levels():
    outside_v1, outside_v2, peak_ratio_v2 = [], [], []
    for i in range(3):
        v1 = view_statistics(synthesize_study([6, i], "B", version=1).frames["anterior"], SPACING)
        study = synthesize_study([6, i], "B", version=2)
        v2 = view_statistics(study.frames["anterior"].astype(float), SPACING)
        outside_v1.append(v1["outside_zero_share"])
        outside_v2.append(v2["outside_zero_share"])
        assert v2["outside_mean"] > 0.05
        peak_ratio_v2.append(v2["max_counts"] / v2["body_median"])
        # what the study says it drew, it drew
        assert 0.005 <= study.acquisition["background_per_pixel"] <= 0.02
    # room background and scatter: far fewer empty pixels outside the body than version 1's nearly none
    assert max(outside_v2) < 0.95 < min(outside_v1)
    # hot spots a few times bone, not tens of times: the real scans' brightest pixel is ≈10× the body median
    assert np.median(peak_ratio_v2) < 30


def test_version_2_lesion_masks_are_hot_spots_seen_per_view():
    contrasts, differ = [], 0
    for i in range(6):
        study = synthesize_study([1, i], "H", version=2)
        for view in ("anterior", "posterior"):
            image = study.frames[view].astype(float)
            for mask in study.masks[view]:
                rows, cols = np.nonzero(mask)
                r0, r1 = max(rows.min() - 6, 0), rows.max() + 7
                c0, c1 = max(cols.min() - 6, 0), cols.max() + 7
                ring = ~mask[r0:r1, c0:c1]
                contrasts.append(image[mask].mean() / max(image[r0:r1, c0:c1][ring].mean(), 1e-6))
        ant, post = study.masks["anterior"], study.masks["posterior"][:, :, ::-1]
        differ += len(ant) == len(post) and any(a.sum() != p.sum() for a, p in zip(ant, post, strict=True))
    assert len(contrasts) > 10 and np.median(contrasts) > 1.3
    # each view blurs a lesion by its own distance, so the two views' masks of one lesion differ in size
    assert differ > 0


def test_body_mask_pelvis_width_and_spectrum_falloff_rules():
    rng = np.random.default_rng(0)
    image = np.zeros((400, 120))
    image[40:360, 20:100] = 30.0  # a "body" 80 pixels wide
    counts = rng.poisson(image + 0.05).astype(float)
    mask = body_mask(counts)
    # the threshold at 20 % of the smoothed body's level sits a sigma (3 px) or less outside the true edge
    assert mask[40:360, 20:100].all() and not mask[:30].any() and not mask[:, :15].any()
    assert 80 <= pelvis_width_px(mask) <= 80 + 2 * 3
    assert pelvis_width_px(np.zeros((10, 10), dtype=bool)) == 0
    with pytest.raises(ValueError, match="no counts"):
        body_mask(np.zeros((50, 50)))
    # a blurrier view falls off at a lower frequency
    texture = ndimage.gaussian_filter(rng.normal(size=(512, 128)), 1.0) + 5
    sharp = spectrum_falloff(*radial_power_spectrum(texture, SPACING), fraction=0.01)
    blurred = spectrum_falloff(*radial_power_spectrum(ndimage.gaussian_filter(texture, 4.0), SPACING), fraction=0.01)
    assert blurred < 0.7 * sharp


@pytest.fixture(scope="module")
def both_versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("realism")
    for version in (1, 2):
        write_dataset(root / f"v{version}", 2, 0, 0, 0, seed=9, progress=False, version=version)
    return root


def test_dataset_records_its_generator_version(both_versions):
    for version in (1, 2):
        folder = both_versions / f"v{version}"
        summary = json.loads((folder / "dataset.json").read_text())
        assert summary["generator_version"] == version
        assert ("camera" in summary) == (version == 2)
        coco = json.loads((folder / "labels" / "SYN00001.json").read_text())
        assert coco["info"]["generator_version"] == version
        ds = pydicom.dcmread(folder / "studies" / "SYN00001.dcm", stop_before_pixels=True)
        assert ds.SoftwareVersions.endswith(f"version {version}")
    assert summary["hot_spots"]["bladder"] == list(HOT_SPOTS_V2.bladder)


def test_realism_report_against_built_in_reference(both_versions, tmp_path):
    folders = {"v1": both_versions / "v1", "v2": both_versions / "v2"}
    report = realism_report(folders, tmp_path / "report", views=("anterior", "posterior"))
    for name in ("report.json", "report.md", "histogram.png", "spectrum.png", "side_by_side.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert report["datasets"]["v2"]["generator_version"] == 2 and report["datasets"]["v1"]["views"] == 4
    table = report["table"]
    assert set(table["v1"]) == set(STATISTICS) == set(REAL_REFERENCE)
    assert all(np.isfinite(row["median"]) for rows in table.values() for row in rows.values())
    # version 2 has room background and scatter outside the body, version 1 nearly nothing
    assert table["v2"]["outside_mean"]["median"] > 10 * table["v1"]["outside_mean"]["median"]
    assert table["v2"]["outside_mean"]["meets"] and not table["v1"]["outside_mean"]["meets"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "mean counts outside the body" in text and "v1, median [min, max]" in text.splitlines()[0]


def test_realism_report_against_a_real_folder_and_bad_inputs(both_versions, tmp_path):
    # any folder of DICOM NM scans can be the reference; here version 2 plays the real scans
    report = realism_report({"v1": both_versions / "v1"}, tmp_path / "r", real_dir=both_versions / "v2")
    assert report["reference"]["source"].endswith("v2") and len(report["real_per_view"]) == 2
    low, high = report["reference"]["ranges"]["outside_mean"]
    assert 0 < low <= high
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a scan")
    with pytest.raises(ValueError, match="no DICOM whole-body view"):
        realism_report({"x": empty}, tmp_path / "r2")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "scan.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    with pytest.raises(ValueError, match="scan.dcm"):
        realism_report({"x": broken}, tmp_path / "r3")
    assert sorted(p.name for p in broken.iterdir()) == ["scan.dcm"]  # inputs untouched


def test_cli_generator_version_and_report(tmp_path):
    out = tmp_path / "ds"
    splits = ("--labeled", 1, "--unlabeled", 0, "--validation", 0, "--test", 0, "--quiet", "--workers", 1)
    run_script("synthesize", "--out", out, "--generator_version", 2, *splits, check=True)
    assert json.loads((out / "dataset.json").read_text())["generator_version"] == 2
    result = run_script("realism_report", "--synthetic", f"v2={out}", "--out", tmp_path / "rep", check=True)
    assert "brightest pixel" in result.stdout and (tmp_path / "rep" / "report.json").is_file()
    bad = run_script("synthesize", "--out", tmp_path / "bad", "--generator_version", 7, *splits)
    assert bad.returncode != 0 and "generator_version" in bad.stderr
