"""``check_datasets``: every missing piece is reported with the command or download that fixes it."""

from __future__ import annotations

from cluda_deploy.data import check_datasets, format_check_report, prepare_dataset


def _by_what(items, dataset):
    return {it.what: it for it in items if it.dataset == dataset}


def test_empty_data_root(tmp_path):
    items = check_datasets("gta", "cityscapes", tmp_path)
    assert [it.ok for it in items] == [False, False]
    gta, cs = items
    assert gta.what == "root" and gta.path == str(tmp_path / "gta")
    assert "download the GTA5 images and labels and unzip them into" in gta.fix
    assert (
        f"download leftImg8bit_trainvaltest.zip and unzip it into {tmp_path / 'cityscapes'}"
        in cs.fix
    )
    report = format_check_report(items)
    assert report.count("[MISSING]") == 2 and "-> download" in report
    assert report.splitlines()[-1] == "2 of 2 checks failed"


def test_raw_data_needs_prepare_then_passes(tmp_path, make_gta, make_cityscapes):
    make_gta(n=2, root=tmp_path / "gta")
    make_cityscapes(root=tmp_path / "cityscapes")
    items = check_datasets("gta", "cityscapes", tmp_path)
    gta, cs = _by_what(items, "gta"), _by_what(items, "cityscapes")
    assert gta["images"].ok and gta["images"].detail == "2 images"
    assert gta["raw labels"].ok
    assert not gta["train-id labels"].ok and gta["train-id labels"].detail == "0 of 2 converted"
    assert gta["train-id labels"].fix == f"run 'cluda data prepare gta --root {tmp_path / 'gta'}'"
    assert gta["class stats"].fix == gta["train-id labels"].fix
    assert cs["images (val)"].ok and cs["raw labels (val)"].ok
    assert cs["train-id labels (val)"].fix == (
        f"run 'cluda data prepare cityscapes --root {tmp_path / 'cityscapes'}'"
    )
    assert "class stats" not in cs  # a target needs no class statistics
    assert "-> run 'cluda data prepare gta --root" in format_check_report(items)

    prepare_dataset("gta", tmp_path / "gta", workers=1, progress=False)
    prepare_dataset("cityscapes", tmp_path / "cityscapes", workers=1, progress=False)
    items = check_datasets("gta", "cityscapes", tmp_path)
    assert all(it.ok and it.fix is None for it in items), format_check_report(items)
    report = format_check_report(items)
    assert "[MISSING]" not in report and report.endswith(f"all {len(items)} checks passed")


def test_missing_val_split_and_folder_target(tmp_path, make_cityscapes, make_synthia):
    make_cityscapes(splits=(("train", 1),), root=tmp_path / "cs")
    make_synthia(root=tmp_path / "syn")
    items = check_datasets("synthia", "cityscapes", tmp_path, source_root=tmp_path / "syn",
                           target_root=tmp_path / "cs")  # fmt: skip
    cs = _by_what(items, "cityscapes")
    assert not cs["images (val)"].ok and "leftImg8bit_trainvaltest.zip" in cs["images (val)"].fix
    assert not cs["raw labels (val)"].ok and "gtFine_trainvaltest.zip" in cs["raw labels (val)"].fix
    syn = _by_what(items, "synthia")
    assert (
        syn["train-id labels"].fix == f"run 'cluda data prepare synthia --root {tmp_path / 'syn'}'"
    )

    items = check_datasets("gta", "folder", tmp_path, target_root=tmp_path / "cs")
    folder = _by_what(items, "folder")["images"]
    assert folder.ok and folder.detail == "1 images"


def test_demo_names_point_at_the_demo_command(tmp_path):
    items = check_datasets("demo-source", "demo-target", tmp_path / "demo")
    assert {it.fix for it in items} == {f"run 'cluda data demo --root {tmp_path / 'demo'}'"}
