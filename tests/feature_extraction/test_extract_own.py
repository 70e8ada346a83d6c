"""extract_own.py on 16 generated shape images with a random VGG19: the packed dataset holds the
own-data labels (seen then unseen), torchvision's features, the word-vector embeddings; a rerun
skips the complete splits; bad inputs stop it before any image is processed."""

from __future__ import annotations

import numpy as np

from biam.demo import shapes as shapes_demo
from biam.datasets.own.annotations import build_own_dataset
from biam.data.packed import PackedDataset, load_embeddings, read_manifest
from biam.data.wordvec import label_embeddings


def run(helpers, demo, out, *extra):
    script = helpers.load_script("extract_own")
    return script.main(["--images", str(demo / "images"), "--annotations", str(demo / "tags.csv"),
                        "--seen", str(demo / "seen.txt"), "--unseen", str(demo / "unseen.txt"),
                        "--word-vectors", str(demo / "word_vectors.txt"), "--out", str(out),
                        "--random-weights", "0", "--dtype", "float32", "--batch-size", "4", "--workers", "0",
                        "--shard-size", "8", "--device", "cpu", *extra])


def test_shapes_to_packed(tmp_path, helpers, vgg_random, capsys):
    demo = tmp_path / "shapes"
    shapes_demo.generate(demo, num_images=16, size=64, seed=3, dim=8)
    out = tmp_path / "packed"
    assert run(helpers, demo, out, "--test-fraction", "0.25", "--seed", "1", "--dataset-name", "shapes") == 0

    expect = build_own_dataset(demo / "tags.csv", demo / "images", seen_file=demo / "seen.txt",
                               unseen_file=demo / "unseen.txt", test_fraction=0.25, seed=1)
    manifest = read_manifest(out)
    assert manifest["dataset"] == "shapes"
    assert manifest["labels"] == {"seen": expect.seen, "unseen": expect.unseen}
    assert manifest["source"]["split"] == {"rule": "fraction", "fraction": 0.25, "seed": 1}
    assert manifest["scene"] == {"present": True, "source": "random-seed-0"}
    for split in ("train", "test"):
        ds = PackedDataset(out, split)
        data = ds.read_slice(0, len(ds))
        ds.close()
        assert list(data["names"]) == expect.splits[split].images  # flat folder: name = path
        np.testing.assert_array_equal(data["labels"], expect.splits[split].labels)
        assert data["regions"].shape == (len(ds), 512, 196) and data["scene"].shape == (len(ds), 4096)
    assert len(expect.splits["test"].images) == 4
    regions, scene = helpers.reference_features(vgg_random, [demo / "images" / p for p in expect.splits["test"].images])
    np.testing.assert_allclose(data["regions"], regions, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data["scene"], scene, rtol=1e-5, atol=1e-6)

    seen, unseen = load_embeddings(out)
    want = label_embeddings(expect.seen + expect.unseen, demo / "word_vectors.txt", progress=False)
    np.testing.assert_allclose(np.concatenate([seen, unseen]), want, rtol=1e-6)
    assert seen.shape == (8, 8) and unseen.shape == (6, 8)
    assert (out / "labels.txt").read_text(encoding="utf-8").split("\n") == expect.seen + expect.unseen + [""]

    # A rerun finds both splits complete and leaves the shards as they were.
    before = {p.name: p.read_bytes() for p in out.glob("*.h5")}
    capsys.readouterr()
    assert run(helpers, demo, out, "--test-fraction", "0.25", "--seed", "1", "--dataset-name", "shapes") == 0
    assert capsys.readouterr().out.count("already complete") == 2
    assert {p.name: p.read_bytes() for p in out.glob("*.h5")} == before


def test_bad_inputs_stop_before_extraction(tmp_path, helpers, capsys):
    demo = tmp_path / "shapes"
    shapes_demo.generate(demo, num_images=4, size=32, seed=0, dim=4)
    out = tmp_path / "packed"
    # Word vectors lacking two words: one error listing both labels that need them.
    text = (demo / "word_vectors.txt").read_text().splitlines()
    (demo / "word_vectors.txt").write_text("".join(ln + "\n" for ln in text if not ln.startswith(("teal ", "dots "))))
    assert run(helpers, demo, out, "--test-fraction", "0.5") == 2
    err = capsys.readouterr().err
    assert "extract_own: error:" in err and "word_vectors.txt" in err
    for label in ("'teal'", "'dots'"):
        assert label in err
    assert not out.exists()

    (demo / "images" / "shape_00002.png").unlink()
    assert run(helpers, demo, out, "--test-fraction", "0.5") == 2
    assert f"{demo / 'tags.csv'}:4: 'shape_00002.png'" in capsys.readouterr().err
    assert not out.exists()


def test_out_with_other_files_is_refused_and_kept(tmp_path, capsys):
    """extract_own takes --out like the other extractors: a folder holding files it did not
    write is refused (exit 2, nothing touched) once the inputs have been checked."""
    from biam.cli.extract_own import main
    from biam.demo import shapes as shapes_demo

    demo = tmp_path / "shapes"
    shapes_demo.generate(demo, num_images=4, size=32, seed=3, dim=8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc = main(["--images", str(demo / "images"), "--annotations", str(demo / "tags.csv"),
               "--seen", str(demo / "seen.txt"), "--unseen", str(demo / "unseen.txt"),
               "--word-vectors", str(demo / "word_vectors.txt"), "--out", str(out),
               "--random-weights", "0", "--workers", "0", "--device", "cpu", "--test-fraction", "0.5"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".biam.lock"}


def test_rerun_with_other_label_order_or_on_another_dataset_changes_nothing(tmp_path, helpers, capsys):
    demo = tmp_path / "shapes"
    shapes_demo.generate(demo, num_images=8, size=32, seed=2, dim=4)
    out = tmp_path / "packed"
    assert run(helpers, demo, out, "--test-fraction", "0.5") == 0
    before = _snapshot(out)
    # The same seen labels in another order: every embedding row would belong to another label.
    seen = (demo / "seen.txt").read_text().splitlines()
    (demo / "seen.txt").write_text("\n".join(seen[::-1]) + "\n")
    capsys.readouterr()
    assert run(helpers, demo, out, "--test-fraction", "0.5") == 2
    err = capsys.readouterr().err
    assert "another order" in err and "nothing was changed" in err and "Traceback" not in err
    assert _snapshot(out) == before
    (demo / "seen.txt").write_text("\n".join(seen) + "\n")
    # Other word vectors for the same labels: refused naming the label.
    lines = (demo / "word_vectors.txt").read_text().splitlines()
    word, *values = lines[0].split(" ")
    lines[0] = " ".join([word] + [str(float(v) + 1.0) for v in values])
    (demo / "word_vectors.txt").write_text("\n".join(lines) + "\n")
    assert run(helpers, demo, out, "--test-fraction", "0.5") == 2
    assert "differs from this run's" in capsys.readouterr().err
    assert _snapshot(out) == before
    # A finished packed folder of another dataset: refused, its embeddings untouched.
    other = tmp_path / "other"
    assert run(helpers, demo, other, "--test-fraction", "0.5", "--dataset-name", "shapes") == 0
    kept = _snapshot(other)
    assert run(helpers, demo, other, "--test-fraction", "0.5") == 2
    assert "'shapes'" in capsys.readouterr().err
    assert _snapshot(other) == kept


def test_links_at_the_names_extraction_writes_are_refused(tmp_path, helpers, capsys):
    demo = tmp_path / "shapes"
    shapes_demo.generate(demo, num_images=4, size=32, seed=2, dim=4)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    for name in (".biam.lock", "manifest.json", ".parts"):
        out = tmp_path / f"out{len(name)}"
        out.mkdir()
        (out / name).symlink_to(victim)
        assert run(helpers, demo, out, "--test-fraction", "0.5") == 2
        err = capsys.readouterr().err
        assert "symbolic link" in err and "Traceback" not in err, err
    assert victim.read_text() == "the user's file"
