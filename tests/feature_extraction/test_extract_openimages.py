"""extract_openimages.py on a tiny CSV: label columns (seen = classes-trainable order, unseen =
unseen_labels order), 2*Confidence-1 / 0, repeated rows merged (positive wins, conflicts
counted), images missing on disk or corrupt in the report, features equal torchvision's."""

from __future__ import annotations

import pickle

import numpy as np

from biam.data.packed import PackedDataset, load_embeddings, read_manifest

SEEN = ["/m/a", "/m/b", "/m/c"]
UNSEEN = ["/m/x", "/m/y"]
ROWS = [  # ImageID, Source, LabelName, Confidence
    ("img1", "verification", "/m/b", "1"),
    ("img1", "verification", "/m/y", "0"),
    ("img1", "crowdsource", "/m/b", "1"),     # repeated, agrees
    ("img2", "verification", "/m/a", "0"),
    ("img2", "crowdsource", "/m/a", "1"),     # repeated, conflicts: positive wins
    ("img2", "verification", "/m/zzz", "1"),  # class in neither list: ignored
    ("img3", "verification", "/m/x", "1"),    # file missing on disk
    ("img4", "verification", "/m/c", "0"),    # corrupt JPEG
]


def test_csv_to_packed(tmp_path, helpers, vgg_file, vgg_random, capsys):
    meta = tmp_path / "2018_04"
    (meta / "test").mkdir(parents=True)
    (meta / "classes-trainable.txt").write_text("\n".join(SEEN) + "\n")
    (meta / "unseen_labels.pkl").write_bytes(pickle.dumps(np.array(UNSEEN, dtype=object), protocol=2))
    (meta / "top_400_unseen.csv").write_bytes("\ufeff1\r\n".encode("utf-8"))
    (meta / "test" / "test-annotations-human-imagelabels.csv").write_text(
        "ImageID,Source,LabelName,Confidence\n" + "".join(",".join(r) + "\n" for r in ROWS))
    images = tmp_path / "images"
    helpers.make_image(images / "img1.jpg", seed=1)
    helpers.make_image(images / "img2.jpg", seed=2, size=(30, 90))
    helpers.make_corrupt_jpeg(images / "img4.jpg")
    rng = np.random.default_rng(0)
    emb = [rng.normal(size=(3, 300)).astype(np.float32), rng.normal(size=(2, 300)).astype(np.float32)]
    (tmp_path / "emb.pkl").write_bytes(pickle.dumps(emb, protocol=2))
    out = tmp_path / "packed"

    script = helpers.load_script("extract_openimages")
    rc = script.main(["--split", "test", "--meta-dir", str(meta), "--images", str(images), "--embeddings",
                      str(tmp_path / "emb.pkl"), "--out", str(out), "--weights", str(vgg_file), "--dtype", "float32",
                      "--batch-size", "4", "--workers", "0", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "2 repeated (image, class) pairs merged, 1 of them conflicting (positive wins)" in printed
    assert "1 rows of 1 classes outside both label lists ignored" in printed

    manifest = read_manifest(out)
    assert manifest["dataset"] == "openimages" and manifest["unseen_eval"] == [1]
    assert manifest["labels"] == {"seen": SEEN, "unseen": UNSEEN}
    ds = PackedDataset(out, "test")
    data = ds.read_slice(0, len(ds))
    assert list(data["names"]) == ["img1", "img2"]
    assert data["labels"].dtype == np.int8 and data["regions"].dtype == np.float32 and data["scene"].shape == (2, 4096)
    #                       /m/a /m/b /m/c /m/x /m/y
    np.testing.assert_array_equal(data["labels"], [[0, 1, 0, 0, -1],
                                                   [1, 0, 0, 0, 0]])
    ref_regions, ref_scene = helpers.reference_features(vgg_random, [images / "img1.jpg", images / "img2.jpg"])
    np.testing.assert_allclose(data["regions"], ref_regions, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data["scene"], ref_scene, rtol=1e-5, atol=1e-6)
    ds.close()

    report = [r.split("\t") for r in (out / "unreadable-test.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in report] == ["img3", "img4"]
    assert report[0][1] == str(images / "img3.jpg") and "FileNotFoundError" in report[0][2]
    seen, unseen = load_embeddings(out)
    np.testing.assert_array_equal(seen, emb[0])
    np.testing.assert_array_equal(unseen, emb[1])


def test_bad_confidence_names_file_line_image_and_field(tmp_path, helpers, capsys):
    meta = tmp_path / "2018_04"
    (meta / "test").mkdir(parents=True)
    (meta / "classes-trainable.txt").write_text("\n".join(SEEN) + "\n")
    (meta / "unseen_labels.pkl").write_bytes(pickle.dumps(np.array(UNSEEN, dtype=object), protocol=2))
    (meta / "top_400_unseen.csv").write_text("0\n")
    (meta / "class-descriptions.csv").write_text("/m/a,apple\n/m/b,big cat\n/m/c,car\n/m/x,xylophone\n/m/y,yak\n")
    helpers.write_glove(tmp_path / "glove.txt", ["apple", "big", "cat", "car", "xylophone", "yak"])
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("ImageID,Source,LabelName,Confidence\nimg1,v,/m/a,1\nimg2,v,/m/b,0.5\n")
    rc = helpers.load_script("extract_openimages").main(
        ["--split", "test", "--meta-dir", str(meta), "--images", str(tmp_path), "--csv", str(csv_file),
         "--glove", str(tmp_path / "glove.txt"), "--out", str(tmp_path / "o"), "--random-weights", "0"])
    assert rc == 2
    assert "labels.csv: line 3, image 'img2': field 'Confidence' is '0.5', expected 0 or 1" in capsys.readouterr().err


def test_non_utf8_annotation_csv_is_named(tmp_path, helpers, capsys):
    meta = tmp_path / "2018_04"
    (meta / "test").mkdir(parents=True)
    (meta / "classes-trainable.txt").write_text("\n".join(SEEN) + "\n")
    (meta / "unseen_labels.pkl").write_bytes(pickle.dumps(np.array(UNSEEN, dtype=object), protocol=2))
    (meta / "top_400_unseen.csv").write_text("0\n")
    rng = np.random.default_rng(0)
    emb = [rng.normal(size=(3, 300)).astype(np.float32), rng.normal(size=(2, 300)).astype(np.float32)]
    (tmp_path / "emb.pkl").write_bytes(pickle.dumps(emb, protocol=2))
    csv_file = tmp_path / "labels.csv"
    csv_file.write_bytes(b"ImageID,Source,LabelName,Confidence\nimg1,v,/m/a,1\nimg\xff2,v,/m/b,0\n")
    rc = helpers.load_script("extract_openimages").main(
        ["--split", "test", "--meta-dir", str(meta), "--images", str(tmp_path), "--csv", str(csv_file),
         "--embeddings", str(tmp_path / "emb.pkl"), "--out", str(tmp_path / "o"), "--random-weights", "0"])
    assert rc == 2
    assert f"{csv_file}: line 3: byte 0xff is not UTF-8" in capsys.readouterr().err
