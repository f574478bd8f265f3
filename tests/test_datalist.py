from __future__ import annotations

import json

import pytest

from malignet_bundle.data.datalist import drop_unreadable, load_datalist, resolve_items


def test_resolve_items_joins_paths_and_enforces_annotation(tmp_path):
    items = [
        {"image": "studies/a.dcm", "label": "labels/a.json", "view": "anterior", "patient_id": "A"},
        {"image": "/abs/b.dcm", "label": "labels/b.json", "patient_id": "B"},
    ]
    resolved = resolve_items(items, tmp_path, require_label=True, split="labeled")
    assert resolved[0]["image"] == str(tmp_path / "studies/a.dcm") and resolved[0]["view"] == "anterior"
    assert resolved[1]["image"] == "/abs/b.dcm" and items[0]["image"] == "studies/a.dcm"  # inputs untouched
    with pytest.raises(ValueError, match="labeled split of the datalist is empty"):
        resolve_items([], tmp_path, require_label=True, split="labeled")
    with pytest.raises(ValueError, match="has no 'label'"):
        resolve_items([{"image": "x.dcm"}], tmp_path, require_label=True)


def test_drop_unreadable_keeps_good_scans_and_logs_bad_ones(synthetic_dataset, tmp_path, caplog):
    good = resolve_items(load_datalist(synthetic_dataset / "datalist.json")["unlabeled"][:1], synthetic_dataset)
    (tmp_path / "bad.dcm").write_bytes(b"garbage" * 30)
    items = good + [{"image": str(tmp_path / "bad.dcm")}, {"image": str(tmp_path / "missing.dcm")}]
    with caplog.at_level("WARNING"):
        kept = drop_unreadable(items)
    assert kept == good
    assert "bad.dcm" in caplog.text and "missing.dcm" in caplog.text


def test_load_datalist_rejects_unknown_splits(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"labeled": [], "training": []}))
    with pytest.raises(ValueError, match="unknown split keys"):
        load_datalist(tmp_path / "d.json")
