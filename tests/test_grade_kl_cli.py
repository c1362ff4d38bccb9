"""`python -m kneelib grade-kl` and the Chen KL reader behind the real-data chapter."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kneelib.cli import main
from kneelib.data.chen_kl import (ChenKLDataError, carve_internal_validation, read_chen_kl,
                                  stratified_subject_subset)
from kneelib.models.multitask import KL_ONLY, MultiTaskNet
from kneelib.grade_kl import grade_kl_folder, save_kl_model, side_from_name

torch.set_num_threads(1)


@pytest.fixture()
def kl_model(tmp_path):
    torch.manual_seed(0)
    return save_kl_model(MultiTaskNet("resnet18", tasks=KL_ONLY), tmp_path / "kl.pt",
                         image_size=32, mirror_side="L")


def _knee_png(path, seed, rgb=False, size=48):
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size, size)) * 255).astype(np.uint8)
    Image.fromarray(np.stack([pixels] * 3, -1) if rgb else pixels).save(path)


def test_grade_kl_command_on_a_folder(tmp_path, kl_model, capsys):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    _knee_png(images / "9000001L.png", 1)
    _knee_png(images / "sub" / "knee_R.png", 2, rgb=True)
    _knee_png(images / "unknown_side.png", 3)
    (images / "broken.png").write_bytes(b"\x89PNG but truncated")
    (images / "notes.txt").write_text("ignored")
    out_csv = tmp_path / "out" / "grades.csv"
    assert main(["grade-kl", "--model", str(kl_model), "--images", str(images), "--out", str(out_csv)]) == 0
    assert "graded 4 images" in capsys.readouterr().out  # noqa: the unreadable one is counted as a row
    table = pd.read_csv(out_csv).set_index("file")
    assert set(table.index) == {"9000001L.png", "sub/knee_R.png", "unknown_side.png", "broken.png"}
    assert "RadiographReadError" in table.loc["broken.png", "error"]
    assert np.isnan(table.loc["broken.png", "kl_grade"])
    good = table.drop(index="broken.png")
    assert good["error"].isna().all()
    assert good["kl_grade"].between(0, 4).all()
    probabilities = good[[f"p_kl{g}" for g in range(5)]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(probabilities.argmax(axis=1), good["kl_grade"].to_numpy())
    assert list(good["side"]) == ["L", "R", "unknown"]


def test_grading_is_repeatable_and_mirrors_left_knees(tmp_path, kl_model):
    folder = tmp_path / "pair"
    folder.mkdir()
    _knee_png(folder / "a_R.png", 5)
    image = np.asarray(Image.open(folder / "a_R.png"))
    Image.fromarray(np.ascontiguousarray(image[:, ::-1])).save(folder / "b_L.png")
    first = grade_kl_folder(kl_model, folder)
    assert first.equals(grade_kl_folder(kl_model, folder))
    # the mirrored left knee is prepared into the same input as the right one
    assert np.allclose(first.filter(like="p_kl").iloc[0], first.filter(like="p_kl").iloc[1], atol=1e-5)


def test_grade_kl_errors(tmp_path, kl_model):
    with pytest.raises(FileNotFoundError, match="image folder"):
        grade_kl_folder(kl_model, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model file"):
        grade_kl_folder(tmp_path / "missing.pt", tmp_path / "empty")
    assert grade_kl_folder(kl_model, tmp_path / "empty").empty


def _fake_chen(root, rows):
    for relpath, *_ in rows:
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        _knee_png(root / relpath, 0, size=16)
    pd.DataFrame(rows, columns=["relpath", "split", "kl_grade", "oai_id", "side"]).to_csv(
        root / "labels.csv", index=False)


def test_chen_reader_errors_and_qc(tmp_path):
    with pytest.raises(ChenKLDataError, match="not found"):
        read_chen_kl(tmp_path / "absent")
    with pytest.raises(ChenKLDataError, match="labels.csv"):
        read_chen_kl(tmp_path)
    rows = [("images/train/0/9000001L.png", "train", 0, "9000001", "L"),
            ("images/train/2/9000001R.png", "train", 2, "9000001", "R"),
            ("images/val/7/9000002R.png", "val", 7, "9000002", "R")]
    _fake_chen(tmp_path, rows)
    pd.concat([pd.read_csv(tmp_path / "labels.csv"),
               pd.DataFrame([{"relpath": "images/val/1/9000003L.png", "split": "val", "kl_grade": 1,
                              "oai_id": "9000003", "side": "L"}])]).to_csv(tmp_path / "labels.csv", index=False)
    table = read_chen_kl(tmp_path)
    assert len(table) == 2 and set(table["subject_id"]) == {"9000001"}
    assert sorted(table.attrs["qc"]["reason"]) == ["image file missing", "kl_grade not in 0-4"]


def test_internal_split_is_subject_level():
    rng = np.random.default_rng(0)
    subjects = [f"{9000000 + i}" for i in range(60)]
    table = pd.DataFrame([{"subject_id": s, "kl_grade": int(rng.integers(0, 5)), "side": side}
                          for s in subjects for side in "LR"])
    train, internal = carve_internal_validation(table, 0.2, seed=1)
    assert not set(train["subject_id"]) & set(internal["subject_id"])
    assert len(train) + len(internal) == len(table)
    assert 0.1 < internal["subject_id"].nunique() / 60 < 0.3
    subset = stratified_subject_subset(table, 20, seed=0)
    assert 15 <= subset["subject_id"].nunique() <= 25
    assert (subset.groupby("subject_id").size() == 2).all()


@pytest.mark.realdata
def test_real_chen_table():
    from kneelib.config import data_root

    if not (data_root() / "chen_kl_radiographs").is_dir():
        pytest.skip("Chen KL radiographs not under KNEELIB_DATA")
    table = read_chen_kl()
    assert len(table) == 2978 and table["kl_grade"].between(0, 4).all()
    assert table.attrs["qc"].empty
    assert not set(table.loc[table.split == "train", "oai_id"]) & set(table.loc[table.split == "val", "oai_id"])


def _dicom(path, pixels, transfer_syntax=None, pixel_data=None, modality="CR", laterality=None):
    """A minimal secondary-capture DICOM of ``pixels`` (uint16), optionally with other pixel bytes."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = modality, "9000001"
    if laterality is not None:
        ds.ImageLaterality = laterality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.2, 0.2]
    if pixel_data is None:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    else:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([pixel_data])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_undecodable_files_are_error_rows_never_the_end_of_the_run(tmp_path, kl_model):
    """Corrupt, truncated, pixel-less and undecodable compressed DICOM files: one error row each."""
    from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1

    folder = tmp_path / "dicom"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, (48, 48)).astype(np.uint16)
    good = _dicom(folder / "9000001R.dcm", pixels)
    data = good.read_bytes()
    (folder / "truncated_L.dcm").write_bytes(data[: len(data) // 2])
    (folder / "garbage_R.dcm").write_bytes(b"DICM" + bytes(rng.integers(0, 256, 600, dtype=np.uint8)))
    _dicom(folder / "jpeg_lossless_R.dcm", pixels, JPEGLosslessSV1, pixel_data=b"\xff\xd8" + b"\x00" * 64)
    _dicom(folder / "jpeg2000_L.dcm", pixels, JPEG2000Lossless, pixel_data=bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
    no_pixels = _dicom(folder / "no_pixels_R.dcm", pixels)
    import pydicom

    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    table = grade_kl_folder(kl_model, folder, out_csv=tmp_path / "grades.csv").set_index("file")
    assert len(table) == 6
    assert table.loc["9000001R.dcm", "error"] == "" and 0 <= table.loc["9000001R.dcm", "kl_grade"] <= 4
    broken = table.drop(index="9000001R.dcm")
    assert broken["kl_grade"].isna().all() and (broken["error"] != "").all()
    for name, row in broken.iterrows():
        assert name in row["error"] or "Error" in row["error"].split(":")[0], (name, row["error"])
    written = pd.read_csv(tmp_path / "grades.csv")
    assert len(written) == 6 and written["error"].notna().sum() == 5


def test_side_from_name():
    assert side_from_name("9000001L.png") == "L" and side_from_name("sub/knee_R.dcm") == "R"
    assert side_from_name("unknown_side.png") is None and side_from_name("KNEE.dcm") is None


def test_cli_does_not_import_papers(tmp_path, kl_model):
    """grade-kl lives in kneelib.grade_kl; the command line never loads kneelib.papers (issue item 20)."""
    cli = Path(__file__).resolve().parents[1] / "kneelib" / "cli.py"
    imported = {node.module for node in ast.walk(ast.parse(cli.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(ast.parse(cli.read_text())) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not [m for m in imported if m.startswith("kneelib.papers")], imported
    folder = tmp_path / "one"
    folder.mkdir()
    _knee_png(folder / "a_R.png", 0)
    code = ("import sys\nfrom kneelib.cli import main\n"
            f"main(['grade-kl', '--model', {str(kl_model)!r}, '--images', {str(folder)!r}, "
            f"'--out', {str(tmp_path / 'g.csv')!r}])\n"
            "print(sorted(m for m in sys.modules if m.startswith('kneelib.papers')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_decoder_crash_of_any_kind_is_an_error_row(tmp_path, kl_model, monkeypatch):
    """A decoder plugin may raise anything (RuntimeError, NotImplementedError ...): still one row."""
    import kneelib.data.radiograph as radiograph

    folder = tmp_path / "crash"
    folder.mkdir()
    _knee_png(folder / "a_R.png", 1)
    _knee_png(folder / "b_L.png", 2)
    real_reader = radiograph.read_radiograph

    def flaky_reader(path, **kwargs):
        if Path(path).name == "b_L.png":
            raise RuntimeError("decoder plugin crashed")
        return real_reader(path, **kwargs)

    monkeypatch.setattr(radiograph, "read_radiograph", flaky_reader)
    table = grade_kl_folder(kl_model, folder).set_index("file")
    assert table.loc["b_L.png", "error"] == "RuntimeError: decoder plugin crashed"
    assert pd.isna(table.loc["b_L.png", "kl_grade"]) and table.loc["a_R.png", "error"] == ""


def test_sparse_grades_are_merged_with_a_neighbour_so_splits_do_not_warn(recwarn):
    from kneelib.data.chen_kl import merge_sparse_grades

    subjects = np.repeat([f"{9000000 + i}" for i in range(12)], 2)
    grades = np.repeat([0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 4], 2)   # grades 2, 3 and 4: one subject each
    strata = merge_sparse_grades(grades, subjects, 3)
    assert list(np.unique(strata)) == [0, 1, 2]
    assert set(strata[grades >= 2]) == {2} and (strata[grades < 2] == grades[grades < 2]).all()
    assert (merge_sparse_grades(grades, subjects, 1) == grades).all()
    table = pd.DataFrame({"subject_id": subjects, "kl_grade": grades})
    carve_internal_validation(table, 0.34, seed=0)
    assert not [w for w in recwarn if "least populated" in str(w.message)]


def test_non_radiograph_dicom_is_refused_and_dicom_laterality_gives_the_side(tmp_path, kl_model):
    folder = tmp_path / "mixed"
    folder.mkdir()
    pixels = np.random.default_rng(3).integers(0, 4096, (48, 48)).astype(np.uint16)
    _dicom(folder / "sagittal_slice.dcm", pixels, modality="MR")
    _dicom(folder / "knee.dcm", pixels, modality="DX", laterality="L")
    _dicom(folder / "named_R.dcm", pixels, modality="RG")
    table = grade_kl_folder(kl_model, folder).set_index("file")
    assert "Modality 'MR'" in table.loc["sagittal_slice.dcm", "error"]
    assert pd.isna(table.loc["sagittal_slice.dcm", "kl_grade"])
    assert table.loc["knee.dcm", "side"] == "L" and table.loc["knee.dcm", "error"] == ""
    assert table.loc["named_R.dcm", "side"] == "R" and 0 <= table.loc["named_R.dcm", "kl_grade"] <= 4


def test_model_file_of_another_version_is_a_clear_error(tmp_path, capsys):
    from kneelib.grade_kl import KLModelError
    from kneelib.models.multitask import save_checkpoint

    old = save_checkpoint(MultiTaskNet("resnet18", tasks=KL_ONLY), tmp_path / "old.pt", {"image_size": 32})
    (tmp_path / "imgs").mkdir()
    with pytest.raises(KLModelError, match="another version"):
        grade_kl_folder(old, tmp_path / "imgs")
    assert main(["grade-kl", "--model", str(tmp_path / "absent.pt"), "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "g.csv"), "--quiet"]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_saved_test_time_augmentation_is_read_from_older_and_current_files(tmp_path):
    from kneelib.grade_kl import KLModelError, load_kl_grader

    model = MultiTaskNet("resnet18", tasks=KL_ONLY)
    older = save_kl_model(model, tmp_path / "older.pt", 32, "L", extra={"tta": None, "tta_flip": True})
    assert load_kl_grader(older)[1]["tta"] == "flip TTA"  # files from before rotation TTA say tta_flip
    current = save_kl_model(model, tmp_path / "current.pt", 32, "L", extra={"tta": "rotation+zoom TTA"})
    assert load_kl_grader(current)[1]["tta"] == "rotation+zoom TTA"
    assert load_kl_grader(save_kl_model(model, tmp_path / "plain.pt", 32, "L"))[1]["tta"] == "plain"
    unknown = save_kl_model(model, tmp_path / "unknown.pt", 32, "L", extra={"tta": "mystery TTA"})
    with pytest.raises(KLModelError, match="unknown test-time augmentation 'mystery TTA'"):
        load_kl_grader(unknown)


def test_out_of_distribution_images_are_flagged_not_graded_and_grad_cams_are_written(tmp_path):
    from kneelib.stats.feature_density import FeatureDensity

    torch.manual_seed(0)
    members = [MultiTaskNet("resnet18", tasks=KL_ONLY) for _ in range(2)]
    folder = tmp_path / "imgs"
    (folder / "a").mkdir(parents=True)
    _knee_png(folder / "a" / "k1_R.png", 1)
    _knee_png(folder / "k2_L.png", 2)
    density = FeatureDensity(np.zeros(512), np.eye(512)[:2], np.ones(2), 1.0, threshold=0.0)  # flags all
    plain = save_kl_model(members, tmp_path / "plain.pt", image_size=32, mirror_side="L")
    flagging = save_kl_model(members, tmp_path / "ood.pt", image_size=32, mirror_side="L",
                             extra={"feature_density": density.to_dict(), "tta": "rotation TTA"})
    graded = grade_kl_folder(plain, folder, gradcam_dir=tmp_path / "cams")
    assert graded["kl_grade"].notna().all() and graded["ood_score"].isna().all()
    assert sorted(p.relative_to(tmp_path / "cams").as_posix() for p in (tmp_path / "cams").rglob("*.png")) == [
        "a/k1_R.png.gradcam.png", "k2_L.png.gradcam.png"]
    flagged = grade_kl_folder(flagging, folder)
    assert flagged["out_of_distribution"].all() and flagged["kl_grade"].isna().all()
    assert (flagged["ood_score"] > 0).all() and np.isfinite(flagged.filter(like="p_kl").to_numpy()).all()
    forced = grade_kl_folder(flagging, folder, grade_out_of_distribution=True)
    assert forced["kl_grade"].notna().all() and forced["out_of_distribution"].all()
    # the ensemble's probabilities are the mean of its members' (with rotation TTA here)
    single = grade_kl_folder(save_kl_model(members[:1], tmp_path / "one.pt", 32, "L"), folder)
    assert not np.allclose(single.filter(like="p_kl").to_numpy(), graded.filter(like="p_kl").to_numpy())


def _tiny_localiser(tmp_path):
    """An untrained landmark CNN saved as a localiser (its points land near the grid's middle)."""
    from kneelib.preprocess.knee_localisation import (LOCALISER_LANDMARKS, KneeLocaliser, LandmarkCNN,
                                                      save_knee_localiser)

    torch.manual_seed(0)
    localiser = KneeLocaliser(LandmarkCNN(len(LOCALISER_LANDMARKS), width=16).eval(), 3.0, (64, 64),
                              LOCALISER_LANDMARKS, pd.DataFrame({"epoch": [1], "train_mse": [0.1]}),
                              frozenset({"9000001"}))
    return localiser, save_knee_localiser(localiser, tmp_path / "models" / "localiser.pt")


def test_full_bilateral_radiographs_are_cut_into_two_knees_by_the_localiser(tmp_path, kl_model, capsys):
    from kneelib.preprocess.knee_localisation import load_knee_localiser

    localiser, localiser_file = _tiny_localiser(tmp_path)
    restored = load_knee_localiser(localiser_file)
    assert restored.trained_on == localiser.trained_on and restored.grid_shape == (64, 64)
    rng = np.random.default_rng(4)
    bilateral = rng.integers(0, 4096, (300, 600)).astype(np.uint16)  # 120 x 240 mm at 0.4 mm
    assert restored.predict(bilateral, 0.4) == localiser.predict(bilateral, 0.4)
    folder = tmp_path / "full"
    folder.mkdir()
    _dicom(folder / "bilateral.dcm", bilateral, modality="DX")  # PixelSpacing 0.2 mm
    Image.fromarray((bilateral // 16).astype(np.uint8)).save(folder / "bilateral.png")
    _knee_png(folder / "crop_R.png", 1)
    without = grade_kl_folder(kl_model, folder).set_index("file")
    assert "--localiser" in without.loc["bilateral.dcm", "error"]
    assert pd.isna(without.loc["bilateral.dcm", "kl_grade"])
    assert without.loc["crop_R.png", "error"] == ""
    table = grade_kl_folder(kl_model, folder, localiser_path=localiser_file, gradcam_dir=tmp_path / "cams")
    dicom = table[table["file"] == "bilateral.dcm"]
    assert list(dicom["knee"]) == ["R", "L"] and list(dicom["side"]) == ["R", "L"]
    assert (dicom["error"] == "").all() and dicom["kl_grade"].between(0, 4).all()
    png = table[table["file"] == "bilateral.png"]
    assert len(png) == 1 and "pixel spacing" in png["error"].iloc[0]  # a PNG carries no spacing
    spaced = grade_kl_folder(kl_model, folder, localiser_path=localiser_file, pixel_spacing_mm=0.2)
    assert list(spaced.loc[spaced["file"] == "bilateral.png", "knee"]) == ["R", "L"]
    assert table.loc[table["file"] == "crop_R.png", "knee"].tolist() == [""]
    cams = sorted(p.name for p in (tmp_path / "cams").glob("*.png"))
    assert cams == ["bilateral.dcm.L.gradcam.png", "bilateral.dcm.R.gradcam.png", "crop_R.png.gradcam.png"]
    out = tmp_path / "g.csv"
    assert main(["grade-kl", "--model", str(kl_model), "--images", str(folder), "--out", str(out), "--quiet",
                 "--localiser", str(localiser_file), "--pixel-spacing", "0.2"]) == 0
    assert len(pd.read_csv(out)) == 5
    assert "graded 5 rows (3 files)" in capsys.readouterr().out  # a bilateral file gives two knee rows
    (tmp_path / "not_a_localiser.pt").write_bytes(b"junk")
    assert main(["grade-kl", "--model", str(kl_model), "--images", str(folder), "--out", str(out), "--quiet",
                 "--localiser", str(tmp_path / "not_a_localiser.pt")]) == 2
    assert "not a readable torch file" in capsys.readouterr().err


def test_bilateral_crop_is_framed_like_the_training_crops():
    from kneelib.grade_kl import MARGINS_PER_PLATEAU_CENTRES, bilateral_crop_mm
    from kneelib.preprocess.knee_crops import CHEN_WIDTH_PER_PLATEAU

    landmarks = {"plateau_lateral": (100.0, 40.0), "plateau_medial": (100.0, 240.0)}  # 200 px apart
    assert bilateral_crop_mm(landmarks, 0.2) == pytest.approx(
        CHEN_WIDTH_PER_PLATEAU * MARGINS_PER_PLATEAU_CENTRES * 40.0)
