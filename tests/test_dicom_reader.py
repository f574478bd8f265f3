from __future__ import annotations

import numpy as np
import pydicom
import pytest
from monai.transforms import Compose, LoadImage, LoadImaged

from malignet_bundle.data.nm_dicom import COMPRESSED_SYNTAXES, DicomInputError, read_nm_views, write_compressed_copy
from malignet_bundle.data.reader import NMWholeBodyReader
from malignet_bundle.data.synthesize import write_dataset
from malignet_bundle.transforms.io import LoadAnnotationd, SelectViewd


@pytest.mark.parametrize("syntax", sorted(COMPRESSED_SYNTAXES))
def test_every_compressed_transfer_syntax_reads_back_exactly(synthetic_dataset, tmp_path, syntax):
    src = synthetic_dataset / "studies" / "SYN00001.dcm"
    dst = tmp_path / f"{syntax}.dcm"
    write_compressed_copy(src, dst, syntax)
    assert pydicom.dcmread(dst).file_meta.TransferSyntaxUID == COMPRESSED_SYNTAXES[syntax]
    original, compressed = read_nm_views(src), read_nm_views(dst)
    np.testing.assert_array_equal(original.frames, compressed.frames)
    assert compressed.views == ["anterior", "posterior"] and compressed.view_source == "view-code"
    # through MONAI's LoadImage: spacing survives into the affine (MONAI's PydicomReader reports 1 mm for NM)
    image = LoadImage(reader=NMWholeBodyReader(), image_only=True)(str(dst))
    assert tuple(image.shape) == (2, 1024, 256)
    np.testing.assert_allclose(image.affine.diagonal()[:2].numpy(), [2.26, 2.26])
    np.testing.assert_allclose(image.pixdim.numpy(), [2.26, 2.26])
    assert image.meta["views"] == ["anterior", "posterior"]


def test_single_frame_views_and_signed_pixels(tmp_path):
    write_dataset(tmp_path, labeled=1, unlabeled=0, validation=0, test=0, seed=0, layout="single", progress=False)
    for suffix, view in (("ANTE", "anterior"), ("POST", "posterior")):
        nm = read_nm_views(tmp_path / "studies" / f"SYN00001_{suffix}.dcm")
        assert nm.views == [view] and nm.frames.shape == (1, 1024, 256)
    ds = pydicom.dcmread(tmp_path / "studies" / "SYN00001_ANTE.dcm")
    pixels = ds.pixel_array.astype(np.int16)
    pixels[0, :5] = -3  # vendor-processed signed data with negative noise
    ds.PixelRepresentation = 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "signed.dcm")
    nm = read_nm_views(tmp_path / "signed.dcm")
    assert nm.frames.min() == 0 and nm.frames[0, 0, 5] == pixels[0, 5]


def test_view_identification_fallbacks(synthetic_dataset, tmp_path):
    ds = pydicom.dcmread(synthetic_dataset / "studies" / "SYN00001.dcm")
    for item in ds.DetectorInformationSequence:
        del item.ViewCodeSequence
    ds.save_as(tmp_path / "nocode.dcm")
    with pytest.warns(UserWarning, match="by frame order"):
        nm = read_nm_views(tmp_path / "nocode.dcm")
    assert nm.views == ["anterior", "posterior"] and nm.view_source == "fallback"
    # swapped detector vector: frame 1 is the posterior head
    ds = pydicom.dcmread(synthetic_dataset / "studies" / "SYN00001.dcm")
    ds.DetectorVector = [2, 1]
    ds.save_as(tmp_path / "swapped.dcm")
    assert read_nm_views(tmp_path / "swapped.dcm").views == ["posterior", "anterior"]
    # single frame without codes: text of the header
    single = tmp_path / "single"
    write_dataset(single, labeled=1, unlabeled=0, validation=0, test=0, seed=0, layout="single", progress=False)
    ds = pydicom.dcmread(single / "studies" / "SYN00001_POST.dcm")
    del ds.DetectorInformationSequence[0].ViewCodeSequence
    ds.ImageID, ds.SeriesDescription = "", "WB POST"
    ds.save_as(tmp_path / "text.dcm")
    nm = read_nm_views(tmp_path / "text.dcm")
    assert nm.views == ["posterior"] and nm.view_source == "text"


def test_bad_files_raise_errors_naming_file_and_reason(synthetic_dataset, tmp_path):
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom file at all" * 10)
    ct = tmp_path / "ct.dcm"
    ds = pydicom.dcmread(synthetic_dataset / "studies" / "SYN00001.dcm")
    ds.Modality = "CT"
    ds.save_as(ct)
    no_spacing = tmp_path / "nospacing.dcm"
    ds.Modality = "NM"
    del ds.PixelSpacing
    ds.save_as(no_spacing)
    for path, reason in (
        (tmp_path / "missing.dcm", "file not found"),
        (garbage, "not a readable DICOM"),
        (ct, "modality is CT"),
        (no_spacing, "PixelSpacing missing"),
    ):
        with pytest.raises(DicomInputError, match=reason) as info:
            read_nm_views(path)
        assert str(path) in str(info.value)


def test_pipeline_mirrors_posterior_with_its_lesions(synthetic_dataset, class_map):
    import json

    datalist = json.loads((synthetic_dataset / "datalist.json").read_text())
    item = next(
        it
        for it in datalist["labeled"]
        if it["view"] == "posterior" and json.loads((synthetic_dataset / it["label"]).read_text())["annotations"]
    )
    load = Compose(
        [
            LoadImaged("image", reader=NMWholeBodyReader(), image_only=True),
            LoadAnnotationd("label", class_map=class_map, dataset_dir=str(synthetic_dataset)),
            SelectViewd("image"),
        ]
    )
    stored = Compose(
        [
            LoadImaged("image", reader=NMWholeBodyReader(), image_only=True),
            LoadAnnotationd("label", class_map=class_map, dataset_dir=str(synthetic_dataset)),
        ]
    )
    raw_item = {**item, "image": str(synthetic_dataset / item["image"])}
    out, raw = load(raw_item), stored(raw_item)
    assert tuple(out["image"].shape) == (1, 1024, 256) and out["image"].meta["mirrored"]
    np.testing.assert_array_equal(out["image"][0].numpy(), raw["image"][1].numpy()[:, ::-1])
    np.testing.assert_array_equal(out["masks"].numpy(), raw["masks"].numpy()[:, :, ::-1])
    image = out["image"][0].numpy()
    for mask, box in zip(out["masks"].numpy().astype(bool), out["boxes"].numpy(), strict=True):
        rows, cols = np.nonzero(mask)
        assert (box == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).all()
        assert image[mask].mean() > image.mean()
    x0, _, x1, _ = out["chest_box"].tolist()
    rx0, _, rx1, _ = raw["chest_box"].tolist()
    assert x0 == pytest.approx(256 - rx1) and x1 == pytest.approx(256 - rx0)


def test_unlabeled_items_load_without_annotation(synthetic_dataset, class_map):
    import json

    item = json.loads((synthetic_dataset / "datalist.json").read_text())["unlabeled"][0]
    out = Compose(
        [
            LoadImaged("image", reader=NMWholeBodyReader(), image_only=True),
            LoadAnnotationd("label", class_map=class_map),
            SelectViewd("image"),
        ]
    )({**item, "image": str(synthetic_dataset / item["image"])})
    assert "masks" not in out and tuple(out["image"].shape) == (1, 1024, 256)


def test_reader_error_surfaces_through_load_image(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 200)
    with pytest.raises(Exception, match="bad.dcm"):
        LoadImage(reader=NMWholeBodyReader(), image_only=True)(str(bad))


def _variant(source, path, mutate) -> None:
    ds = pydicom.dcmread(source)
    mutate(ds)
    ds.save_as(path, enforce_file_format=True)


def test_a_lying_header_is_refused_before_any_pixel_is_read(synthetic_dataset, tmp_path):
    import tracemalloc

    def lie(ds):  # 1 MiB of pixels under a header claiming one 12000x12000 frame (288 MB decoded)
        ds.Rows = ds.Columns = 12000
        ds.NumberOfFrames, ds.DetectorVector = 1, [1]

    path = tmp_path / "lying.dcm"
    _variant(synthetic_dataset / "studies" / "SYN00001.dcm", path, lie)
    tracemalloc.start()
    try:
        with pytest.raises(DicomInputError, match="12000x12000") as info:
            read_nm_views(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and "pixel data holds 1048576 bytes" in info.value.reason
    assert peak < 1 << 20  # neither the claimed frame nor even the file's own pixel data was allocated


def test_view_codes_must_name_each_view_once(synthetic_dataset, tmp_path):
    source = synthetic_dataset / "studies" / "SYN00001.dcm"

    def same_code(ds):
        ds.DetectorInformationSequence[1].ViewCodeSequence = ds.DetectorInformationSequence[0].ViewCodeSequence

    def contradicting(ds):  # frame 1 coded posterior, frame 2 uncoded: frame order would call frame 1 anterior
        ds.DetectorInformationSequence[0].ViewCodeSequence = ds.DetectorInformationSequence[1].ViewCodeSequence
        del ds.DetectorInformationSequence[1].ViewCodeSequence

    def consistent(ds):  # frame 1 coded anterior, frame 2 uncoded: frame order agrees
        del ds.DetectorInformationSequence[1].ViewCodeSequence

    for name, mutate, reason in (
        ("same.dcm", same_code, "frames 1 and 2 carry the same view code, anterior"),
        ("contradicting.dcm", contradicting, "frame 1 carries the posterior view code but the other frame has none"),
    ):
        _variant(source, tmp_path / name, mutate)
        with pytest.raises(DicomInputError, match=reason) as info:
            read_nm_views(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
    _variant(source, tmp_path / "consistent.dcm", consistent)
    with pytest.warns(UserWarning, match="by frame order"):
        assert read_nm_views(tmp_path / "consistent.dcm").views == ["anterior", "posterior"]


def test_constant_frames_and_spot_views_are_not_whole_body_views(synthetic_dataset, tmp_path):
    source = synthetic_dataset / "studies" / "SYN00001.dcm"

    def constant_posterior(ds):
        pixels = ds.pixel_array.copy()
        pixels[1] = 7
        ds.PixelData = pixels.tobytes()

    def spot_view(ds):  # a 256x256 static image: big enough, but square
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, 300:556, :]).tobytes()
        ds.Rows = 256

    for name, mutate, reason in (
        ("constant.dcm", constant_posterior, r"frame 2 \(posterior\) is constant \(every pixel 7\)"),
        ("spot.dcm", spot_view, "256x256 pixels is not a whole-body strip"),
    ):
        _variant(source, tmp_path / name, mutate)
        with pytest.raises(DicomInputError, match=reason) as info:
            read_nm_views(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_load_nm_viewd_never_falls_back_to_another_reader(synthetic_dataset, tmp_path):
    """MONAI's LoadImaged tries its other readers when the NM reader refuses a file; LoadNMViewd does not."""
    from malignet_bundle.transforms.io import LoadNMViewd

    def three_frames(ds):
        pixels = ds.pixel_array
        ds.PixelData = np.concatenate([pixels, pixels[:1]]).tobytes()
        ds.NumberOfFrames, ds.DetectorVector = 3, [1, 2, 1]

    path = tmp_path / "three.dcm"
    _variant(synthetic_dataset / "studies" / "SYN00001.dcm", path, three_frames)
    # the stock transform loads it through a fallback reader, as if it were fine: why LoadNMViewd exists
    assert LoadImaged("image", reader=NMWholeBodyReader(), image_only=True)({"image": str(path)})["image"].numel()
    with pytest.raises(DicomInputError, match="3 frames") as info:
        LoadNMViewd("image")({"image": str(path)})
    assert str(path) in str(info.value)
    good = LoadNMViewd("image")({"image": str(synthetic_dataset / "studies" / "SYN00001.dcm")})["image"]
    assert tuple(good.shape) == (2, 1024, 256) and good.meta["views"] == ["anterior", "posterior"]


def test_deflated_file_reads_back_exactly(synthetic_dataset, tmp_path):
    """The header is read with deferred pixel data; a deflated file must not be re-read at inflated offsets."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    src = synthetic_dataset / "studies" / "SYN00001.dcm"
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    assert (tmp_path / "deflated.dcm").stat().st_size < src.stat().st_size  # really deflated
    copy, original = read_nm_views(tmp_path / "deflated.dcm"), read_nm_views(src)
    np.testing.assert_array_equal(copy.frames, original.frames)
    assert copy.views == original.views
