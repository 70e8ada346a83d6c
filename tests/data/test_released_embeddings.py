"""Tests of the release readers (biam.datasets.*.release) and biam.data.wordvec (GloVe, npz, released pickles)."""

import pickle

import numpy as np
import pytest

from biam.data.wordvec import build_from_glove, label_words, load_embedding_array, save_embedding_array
from biam.datasets.nus_wide.release import nus_wide_label_names, read_img_names, read_nus_wide_embeddings
from biam.datasets.openimages.release import (read_class_descriptions, read_classes_trainable, read_top400,
                                              read_unseen_ids)
from biam.utils.text import read_lines


def test_nus_wide_label_split(tmp_path):
    (tmp_path / "tags.txt").write_bytes(b"sky\r\nbeach\r\nwater\r\nanimal\r\n\r\n")
    (tmp_path / "concepts.txt").write_bytes(b"animal\r\nbeach\r\nairport\r\n")
    seen, unseen, idx = nus_wide_label_names(tmp_path / "tags.txt", tmp_path / "concepts.txt")
    assert seen == ["sky", "water"] and unseen == ["animal", "beach", "airport"] and idx.tolist() == [0, 2]
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="gap.txt: line 2 is empty"):
        read_lines(tmp_path / "gap.txt")


def test_img_names_checks(tmp_path):
    path = tmp_path / "names.pkl"
    path.write_bytes(pickle.dumps({"img_names": ["a.jpg", "b c-d.jpg"]}, protocol=2))
    assert read_img_names(path) == ["a.jpg", "b c-d.jpg"]
    path.write_bytes(pickle.dumps({"names": []}))
    with pytest.raises(ValueError, match="key 'img_names'"):
        read_img_names(path)
    path.write_bytes(pickle.dumps({"img_names": ["x", "x"]}))
    with pytest.raises(ValueError, match="'x' appears more than once"):
        read_img_names(path)


def test_released_label_files(shared_data):
    """Uses the real release files in ../shared/data (label lists, top-400 csv with BOM, ids, descriptions)."""
    nus = shared_data / "NUS-WIDE"
    seen, unseen, idx = nus_wide_label_names(nus / "TagList1k.txt", nus / "Concepts81.txt")
    assert (len(seen), len(unseen)) == (925, 81)
    assert not set(seen) & set(unseen)
    s_emb, u_emb = read_nus_wide_embeddings(nus / "NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300", idx, 1000, 81)
    assert s_emb.shape == (925, 300) and u_emb.shape == (81, 300) and s_emb.dtype == np.float32
    oi = shared_data / "OpenImages"
    classes = read_classes_trainable(oi / "classes-trainable.txt")
    unseen_ids = read_unseen_ids(oi / "unseen_labels.pkl")
    top = read_top400(oi / "top_400_unseen.csv", num_unseen=len(unseen_ids))
    assert (len(classes), len(unseen_ids), len(top)) == (7186, 2594, 400)
    assert top[0] == 991  # the first line starts with a UTF-8 byte-order mark
    desc = read_class_descriptions(oi / "class-descriptions.csv")
    assert all(c in desc for c in classes) and desc["/m/0105ld7g"] == "Pistachio ice cream"


def test_glove_building(tmp_path):
    glove = tmp_path / "glove.txt"
    vec = {"ice": [1, 0, 0], "cream": [0, 1, 0], "sky": [0, 0, 2], "blue": [1, 1, 1]}
    glove.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vec.items()), encoding="utf-8")
    assert label_words("Ice_cream-Cone big") == ["ice", "cream", "cone", "big"]
    emb = build_from_glove(["Ice cream", "sky", "Blue_sky"], glove)
    np.testing.assert_allclose(emb, [[0.5, 0.5, 0], [0, 0, 2], [0.5, 0.5, 1.5]])
    with pytest.raises(KeyError) as info:
        build_from_glove(["ice cone", "sky", "zebra"], glove)
    msg = str(info.value)
    assert "'ice cone': cone" in msg and "'zebra': zebra" in msg  # all missing words, in one error
    np.testing.assert_allclose(build_from_glove(["ice cone"], glove, missing="skip-word"), [[1, 0, 0]])
    with pytest.warns(UserWarning, match="zebra"):
        emb = build_from_glove(["zebra", "sky"], glove, missing="zero")
    np.testing.assert_allclose(emb[0], 0)


def test_npy_npz_roundtrip(tmp_path):
    a = np.random.default_rng(0).random((4, 300)).astype(np.float32)
    np.testing.assert_array_equal(load_embedding_array(save_embedding_array(tmp_path / "e.npy", a)), a)
    save_embedding_array(tmp_path / "e.npz", {"seen": a, "unseen": a[:2]})
    np.testing.assert_array_equal(load_embedding_array(tmp_path / "e.npz", "unseen"), a[:2])
    with pytest.raises(KeyError, match="say which one"):
        load_embedding_array(tmp_path / "e.npz")
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        load_embedding_array(tmp_path / "obj.npy")


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x0c", "\r"])
def test_read_lines_refuses_other_line_breaks_naming_file_and_line(tmp_path, sep):
    path = tmp_path / "labels.txt"
    path.write_text(f"sky\r\ndog{sep}cat\nwater\n", encoding="utf-8", newline="")
    with pytest.raises(ValueError, match=rf"labels\.txt: line 2 holds U\+{ord(sep):04X}"):
        read_lines(path)
    path.write_text("sky\r\ndog cat\nwater\n", encoding="utf-8", newline="")
    assert read_lines(path) == ["sky", "dog cat", "water"]
