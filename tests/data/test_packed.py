"""Tests of biam.data.packed: writer checks, reader errors, checksums, resume bookkeeping."""

import json

import h5py
import numpy as np
import pytest

from biam.data.packed import (PackedDataset, PackedFormatError, PackedWriter, l2_normalize, load_embeddings,
                              read_manifest, save_embeddings)

LABELS = dict(dataset="toy", seen_labels=["a", "b"], unseen_labels=["c", "d"])


def _write(root, n=30, shard_size=12, **kw):
    rng = np.random.default_rng(0)
    w = PackedWriter(root, "train", shard_size=shard_size, **LABELS, **kw)
    regions = rng.random((n, 512, 196), dtype=np.float32) * 10
    labels = rng.integers(-1, 2, (n, 4)).astype(np.int8)
    w.append(regions[:7], labels[:7], [f"n{i}" for i in range(7)])
    w.append(regions[7:], labels[7:], [f"n{i}" for i in range(7, n)])
    w.close()
    return regions, labels


def test_roundtrip_and_layout(tmp_path):
    regions, labels = _write(tmp_path, unseen_eval=[1])
    ds = PackedDataset(tmp_path, "train")
    assert len(ds) == 30 and ds.shard_offsets.tolist() == [0, 12, 24, 30]
    assert ds.unseen_eval.tolist() == [1]
    got = ds.read_slice(5, 27)
    np.testing.assert_allclose(got["regions"], regions[5:27].astype(np.float16))
    np.testing.assert_array_equal(got["labels"], labels[5:27])
    assert got["names"].tolist() == [f"n{i}" for i in range(5, 27)]
    with h5py.File(tmp_path / "train-00000.h5", "r") as f:
        assert f["regions"].dtype == np.float16 and f["regions"].chunks[1:] == (512, 196)
        assert f["labels"].dtype == np.int8 and "scene" not in f
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "train-00000.h5", "train-00001.h5",
                                                           "train-00002.h5"]
    assert ds.count_positives().tolist() == (labels[:, :2] == 1).sum(1).tolist()


@pytest.mark.parametrize("bad,match", [
    (dict(labels=np.full((2, 4), 3, np.int8)), "image 'x0', field 'labels'"),
    (dict(regions=np.full((2, 512, 196), 70000.0, np.float32)), "image 'x0', field 'regions': not finite as float16"),
    (dict(regions=np.zeros((2, 512, 195), np.float32)), "field 'regions': shape"),
    (dict(names=["x0", "a/b"]), "'a/b', field 'names'"),
])
def test_writer_rejects_bad_records(tmp_path, bad, match):
    w = PackedWriter(tmp_path, "train", shard_size=4, **LABELS)
    args = dict(regions=np.zeros((2, 512, 196), np.float32), labels=np.zeros((2, 4), np.int8), names=["x0", "x1"])
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        w.append(**args)


def test_verify_names_the_changed_shard(tmp_path):
    _write(tmp_path)
    ds = PackedDataset(tmp_path, "train")
    ds.verify(progress=False)
    with h5py.File(tmp_path / "train-00001.h5", "r+") as f:
        f["labels"][0, 0] = -f["labels"][0, 0] or 1
    with pytest.raises(PackedFormatError, match="train-00001.h5: sha256"):
        PackedDataset(tmp_path, "train").verify(progress=False)


def test_missing_truncated_and_inconsistent(tmp_path):
    _write(tmp_path)
    (tmp_path / "train-00002.h5").write_bytes((tmp_path / "train-00002.h5").read_bytes()[:5000])
    with pytest.raises(PackedFormatError, match="train-00002.h5: cannot open shard"):
        PackedDataset(tmp_path, "train").read_slice(20, 30)
    (tmp_path / "train-00002.h5").unlink()
    with pytest.raises(PackedFormatError, match="train-00002.h5: shard listed in the manifest is missing"):
        PackedDataset(tmp_path, "train").read_slice(25, 26)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["num_images"] = 11
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackedFormatError, match="splits.train.num_images"):
        read_manifest(tmp_path)
    m["splits"]["train"]["num_images"] = 29
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackedFormatError, match="train-00000.h5: field 'regions': shape"):
        PackedDataset(tmp_path, "train").read_slice(0, 1)
    with pytest.raises(PackedFormatError, match="no split 'test'"):
        PackedDataset(tmp_path, "test")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PackedFormatError, match="not valid JSON"):
        PackedDataset(tmp_path, "train")


def test_resume_keeps_listed_shards_and_refuses_changes(tmp_path):
    w = PackedWriter(tmp_path, "train", shard_size=4, **LABELS)
    w.append(np.ones((10, 512, 196), np.float32), np.zeros((10, 4), np.int8), [f"n{i}" for i in range(10)])
    # Simulate a kill while shard 2 was written: 2 complete shards listed, the third recorded as
    # being written (the writer records it before creating the file), its temporary file left.
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["splits"]["train"]["writing"] = "train-00002.h5"
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "train-00002.h5.tmp").write_bytes(b"partial")
    with pytest.raises(PackedFormatError, match="incomplete"):
        PackedDataset(tmp_path, "train")
    w2 = PackedWriter(tmp_path, "train", shard_size=4, **LABELS)
    assert w2.num_images == 8 and not (tmp_path / "train-00002.h5.tmp").exists()
    with pytest.raises(PackedFormatError, match="shard_size"):
        PackedWriter(tmp_path, "train", shard_size=5, **LABELS)
    with pytest.raises(PackedFormatError, match="'feature_dtype'"):
        PackedWriter(tmp_path, "train", shard_size=4, dtype="float32", **LABELS)
    # A listed shard whose bytes changed is rewritten (with a warning), with all later ones.
    with open(tmp_path / "train-00001.h5", "r+b") as fh:
        fh.seek(3000)
        fh.write(b"\x01\x02")
    with pytest.warns(UserWarning, match="train-00001.h5: sha256"):
        w3 = PackedWriter(tmp_path, "train", shard_size=4, **LABELS)
    assert w3.num_images == 4


def test_embeddings_roundtrip(tmp_path):
    _write(tmp_path)
    seen = np.arange(600, dtype=np.float32).reshape(2, 300)
    save_embeddings(tmp_path, seen, np.ones((2, 300)))
    s, u = load_embeddings(tmp_path)
    np.testing.assert_array_equal(s, seen)
    assert u.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(s), axis=1), 1.0, rtol=1e-6)
    save_embeddings(tmp_path, seen, np.ones((3, 300)))
    with pytest.raises(PackedFormatError, match="'unseen' has shape"):
        load_embeddings(tmp_path)


def test_writer_deletes_only_its_own_files(tmp_path):
    """Files the manifest does not list survive, even with shard-like names; a name collision is
    refused unless overwrite=True, and then only that name is replaced."""
    foreign = {"train-notes.h5": b"mine", "train-00000.h5.bak": b"backup", "test-00000.h5": b"other"}
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
    w = PackedWriter(tmp_path, "train", shard_size=4, **LABELS)
    w.append(np.ones((6, 512, 196), np.float32), np.zeros((6, 4), np.int8), [f"n{i}" for i in range(6)])
    w.close()
    # Start the split over (resume=False) with a larger shard size: its own 2 shards are replaced by 1.
    w = PackedWriter(tmp_path, "train", shard_size=8, resume=False, **LABELS)
    assert not (tmp_path / "train-00001.h5").exists()  # listed before, this tool's own file
    w.append(np.ones((6, 512, 196), np.float32), np.zeros((6, 4), np.int8), [f"n{i}" for i in range(6)])
    w.close()
    for name, data in foreign.items():
        assert (tmp_path / name).read_bytes() == data
    # An unlisted file at the name of the next shard is someone else's: refused, kept.
    other = tmp_path / "other"
    other.mkdir()
    (other / "train-00000.h5").write_bytes(b"not ours")
    w = PackedWriter(other, "train", shard_size=4, **LABELS)
    with pytest.raises(PackedFormatError, match=r"train-00000.h5: a file of this name .* --overwrite"):
        w.append(np.ones((4, 512, 196), np.float32), np.zeros((4, 4), np.int8), [f"n{i}" for i in range(4)])
    assert (other / "train-00000.h5").read_bytes() == b"not ours"
    w = PackedWriter(other, "train", shard_size=4, overwrite=True, **LABELS)
    w.append(np.ones((4, 512, 196), np.float32), np.zeros((4, 4), np.int8), [f"n{i}" for i in range(4)])
    w.close()
    assert len(PackedDataset(other, "train")) == 4


def _corrupt_label(path, row, value):
    """Overwrite the byte of label (row, 1) in the file itself, as a disk or copy error would."""
    with h5py.File(path, "r") as f:
        ds = f["labels"]
        chunk_rows, cols = ds.chunks
        assert row < chunk_rows and ds.compression is None
        offset = ds.id.get_chunk_info(0).byte_offset + row * cols + 1
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes([value]))


def test_open_checks_split_labels_and_paths(tmp_path):
    _write(tmp_path)  # train: 30 images in shards of 12
    w = PackedWriter(tmp_path, "test", shard_size=12, **LABELS)
    w.append(np.ones((12, 512, 196), np.float32), np.zeros((12, 4), np.int8), [f"t{i}" for i in range(12)])
    w.close()
    with h5py.File(tmp_path / "train-00001.h5", "r") as f:
        assert f.attrs["split"] == "train" and f.attrs["dataset"] == "toy"
    # A test shard copied over a training shard of the same size: refused at open, both named.
    good = (tmp_path / "train-00001.h5").read_bytes()
    (tmp_path / "train-00001.h5").write_bytes((tmp_path / "test-00000.h5").read_bytes())
    with pytest.raises(PackedFormatError, match="train-00001.h5: this shard was written for split 'test' but the "
                                                "manifest lists it under split 'train'"):
        PackedDataset(tmp_path, "train")
    (tmp_path / "train-00001.h5").write_bytes(good)
    # One corrupted label byte: named at open with shard, image, index and column.
    _corrupt_label(tmp_path / "train-00001.h5", 5, 7)
    with pytest.raises(PackedFormatError) as err:
        PackedDataset(tmp_path, "train")
    assert ("train-00001.h5: image 'n17' (image 5 of the shard, 17 of split 'train'), field 'labels': value 7 "
            "at column 1 (seen label 'b')") in str(err.value)
    PackedDataset(tmp_path, "train", check=False)  # the check can be skipped explicitly
    # Manifest paths stay inside the dataset folder.
    m = json.loads((tmp_path / "manifest.json").read_text())
    for bad in ("/etc/passwd", "../embeddings.npz", "sub/../../x.npz"):
        m["embeddings"] = bad
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(PackedFormatError, match="field 'embeddings'.*no absolute path"):
            load_embeddings(tmp_path)
    m["embeddings"] = "embeddings.npz"
    m["splits"]["../up"] = m["splits"].pop("test")
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackedFormatError, match=r"splits\.\.\./up"):
        read_manifest(tmp_path)


def test_shards_without_attributes_still_open(tmp_path):
    """Shards written before the split/dataset attributes existed stay readable."""
    _write(tmp_path)
    for i in range(3):
        with h5py.File(tmp_path / f"train-{i:05d}.h5", "r+") as f:
            for key in list(f.attrs):
                del f.attrs[key]
    assert len(PackedDataset(tmp_path, "train")) == 30


@pytest.mark.parametrize("text,match", [("[" * 100000 + "]" * 100000, "nested too deeply"), ("[1, 2]", "expected a JSON object"),
                                        ('{"format_version": NaN}', "not valid JSON")])
def test_manifest_of_deep_nesting_or_wrong_type_is_named(tmp_path, text, match):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(PackedFormatError, match=match):
        read_manifest(tmp_path)


def test_nan_embedding_row_is_refused_and_a_zero_row_named_in_a_warning(tmp_path):
    w = PackedWriter(tmp_path, "test", shard_size=4, dtype="float32", **LABELS)
    w.append(np.zeros((1, 512, 196), np.float32), np.zeros((1, 4), np.int8), ["a.jpg"])
    w.close()
    emb = np.ones((2, 3), np.float32)
    save_embeddings(tmp_path, emb, np.array([[1, 2, 3], [0, 0, 0]], np.float32))
    with pytest.warns(UserWarning, match=r"array 'unseen': 1 all-zero row\(s\): row 1 \(label 'd'\)"):
        load_embeddings(tmp_path)
    # A NaN row written by another tool (save_embeddings itself refuses one).
    import io
    import zipfile
    buf = {}
    for key, arr in (("seen", np.array([[1, 2, 3], [np.nan, 0, 0]], np.float32)), ("unseen", emb)):
        b = io.BytesIO()
        np.save(b, arr)
        buf[key] = b.getvalue()
    with zipfile.ZipFile(tmp_path / "embeddings.npz", "w") as zf:
        for key, data in buf.items():
            zf.writestr(f"{key}.npy", data)
    with pytest.raises(PackedFormatError, match=r"array 'seen' row 1 \(label 'b'\) is not finite"):
        load_embeddings(tmp_path)


def test_l2_normalize_rows_past_the_float32_norm_range_are_not_zeroed():
    rng = np.random.default_rng(0)
    ordinary = rng.normal(size=(3, 300)).astype(np.float32)
    huge = np.full((1, 300), 3e19, dtype=np.float32)  # squares overflow float32
    out = l2_normalize(np.concatenate([ordinary, huge]))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out[3].astype(np.float64)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[3], np.full(300, 1 / np.sqrt(300), dtype=np.float32), rtol=1e-6)
    # Ordinary rows: bit for bit what the float32 computation gives.
    want = ordinary / np.maximum(np.linalg.norm(ordinary, axis=-1, keepdims=True), 1e-12)
    assert np.array_equal(out[:3], want) and np.array_equal(l2_normalize(ordinary), want)
    assert np.array_equal(l2_normalize(np.zeros((2, 4), np.float32)), np.zeros((2, 4), np.float32))
