"""Word-vector files (GloVe and fastText .vec) -> label embeddings: parsing, multi-word means,
case fallback, L2 norm, and errors that name the file and line or list every missing label."""

from __future__ import annotations

import numpy as np
import pytest

from biam.data.wordvec import (OutOfVocabularyError, WordVectorError, label_embeddings, read_word_vectors,
                               split_label)

VECS = {
    "red": [1.0, 0.0, 0.0],
    "circle": [0.0, 2.0, 0.0],
    "ice": [0.0, 0.0, 3.0],
    "cream": [1.0, 1.0, 1.0],
    "Paris": [4.0, 0.0, 0.0],
    "Dog": [0.0, 5.0, 0.0],
    "dog": [0.0, 0.0, 6.0],
}


def glove_text(vecs=VECS) -> str:
    return "".join(w + " " + " ".join(f"{v:g}" for v in vec) + "\n" for w, vec in vecs.items())


def vec_text(vecs=VECS) -> str:
    # fastText writes a header and a trailing space on every line.
    return f"{len(vecs)} 3\n" + "".join(w + " " + " ".join(f"{v:g}" for v in vec) + " \n" for w, vec in vecs.items())


@pytest.fixture(params=["glove", "vec"])
def wordfile(request, tmp_path):
    path = tmp_path / ("words.txt" if request.param == "glove" else "words.vec")
    path.write_text(glove_text() if request.param == "glove" else vec_text(), encoding="utf-8")
    return path


def test_split_label_keeps_case_and_splits_on_space_underscore_dash():
    assert split_label("Ice_cream") == ["Ice", "cream"]
    assert split_label(" red - circle  sky") == ["red", "circle", "sky"]
    assert split_label("__") == []


def test_both_formats_give_the_same_vectors(wordfile):
    vecs, dim = read_word_vectors(wordfile, ["red", "cream"])
    assert dim == 3 and set(vecs) == {"red", "cream"}
    np.testing.assert_array_equal(vecs["cream"], np.ones(3, np.float32))
    assert vecs["red"].dtype == np.float32


def test_forced_format_and_header_detection(tmp_path):
    path = tmp_path / "w.vec"
    path.write_text(glove_text())
    with pytest.raises(WordVectorError, match=r"w\.vec: line 1: expected the \.vec header"):
        read_word_vectors(path, ["red"], fmt="vec")
    vecs, _ = read_word_vectors(path, ["red"], fmt="glove")
    np.testing.assert_array_equal(vecs["red"], [1, 0, 0])


def test_multi_word_labels_are_averaged_then_normalised(wordfile):
    out = label_embeddings(["red circle", "ice_cream", "red-circle"], wordfile)
    assert out.shape == (3, 3) and out.dtype == np.float32
    mean = np.array([0.5, 1.0, 0.0])
    np.testing.assert_allclose(out[0], mean / np.linalg.norm(mean), rtol=1e-6)
    np.testing.assert_allclose(out[2], out[0])
    mean = np.array([0.5, 0.5, 2.0])
    np.testing.assert_allclose(out[1], mean / np.linalg.norm(mean), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    raw = label_embeddings(["red circle"], wordfile, normalize=False)
    np.testing.assert_allclose(raw[0], [0.5, 1.0, 0.0])


def test_case_fallback_prefers_exact_then_lower_case(wordfile):
    out = label_embeddings(["paris", "DOG", "Dog", "RED"], wordfile, normalize=False)
    np.testing.assert_array_equal(out[0], [4, 0, 0])  # only "Paris" exists
    np.testing.assert_array_equal(out[1], [0, 0, 6])  # "dog" (lower case) wins over "Dog"
    np.testing.assert_array_equal(out[2], [0, 5, 0])  # as written
    np.testing.assert_array_equal(out[3], [1, 0, 0])


def test_oov_is_one_error_listing_every_label_and_the_file(wordfile):
    with pytest.raises(OutOfVocabularyError) as err:
        label_embeddings(["red", "zebra", "ice_creamery", "blue whale"], wordfile)
    msg = str(err.value)
    assert str(wordfile) in msg and "3 of 4 labels" in msg
    assert "'zebra'" in msg and "'ice_creamery' (missing: creamery)" in msg and "'blue whale' (missing: blue, whale)" in msg
    assert err.value.labels == {"zebra": ["zebra"], "ice_creamery": ["creamery"], "blue whale": ["blue", "whale"]}


@pytest.mark.parametrize("bad_line, expect", [
    ("sky 1 2\n", r"line 3: 2 values after the word 'sky', expected 3"),
    ("sky 1 2 3 4\n", r"line 3: 4 values after the word 'sky', expected 3"),
])
def test_wrong_width_names_file_and_line(tmp_path, bad_line, expect):
    path = tmp_path / "g.txt"
    path.write_text("red 1 0 0\ncircle 0 1 0\n" + bad_line + "ice 0 0 1\n")
    with pytest.raises(WordVectorError, match=expect) as err:
        read_word_vectors(path, ["ice"])
    assert str(path) in str(err.value)


def test_spaced_words_of_glove_840b_are_words_not_a_width_error(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("red 1 0 0\n. . . 0 1 0\n")
    vecs, _ = read_word_vectors(path, [". . ."])
    np.testing.assert_array_equal(vecs[". . ."], [0, 1, 0])


def test_non_numbers_and_non_utf8_name_the_line(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("red 1 0 0\ncircle 0 x 0\n")
    with pytest.raises(WordVectorError, match=r"g\.txt: line 2 \(word 'circle'\): values are not numbers"):
        read_word_vectors(path, ["circle"])
    path.write_bytes(b"red 1 0 0\ncaf\xe9 0 1 0\n")
    with pytest.raises(WordVectorError, match=r"g\.txt: line 2: not UTF-8"):
        read_word_vectors(path, ["red", "sky"])
    path.write_text("red 1 nan 0\n")
    with pytest.raises(WordVectorError, match="line 1 .*not finite"):
        read_word_vectors(path, ["red"])


def test_stops_reading_once_every_word_is_found(tmp_path):
    # A broken line after the last wanted word is never reached (big files are not read to the end).
    path = tmp_path / "g.txt"
    path.write_text("red 1 0 0\ncircle 0 1 0\nbroken 1\n")
    vecs, _ = read_word_vectors(path, ["circle"])
    assert set(vecs) == {"circle"}
    with pytest.raises(WordVectorError, match="line 3"):
        read_word_vectors(path, ["circle", "Circle"])  # "Circle" is not found as written: reads on


def test_vec_header_count_must_match(tmp_path):
    path = tmp_path / "w.vec"
    path.write_text("5 3\nred 1 0 0 \ncircle 0 1 0 \n")
    with pytest.raises(WordVectorError, match="header announces 5 vectors, the file holds 2"):
        read_word_vectors(path, ["sky"])


def test_missing_file_empty_file_and_empty_label(tmp_path):
    with pytest.raises(WordVectorError, match="word-vector file not found"):
        read_word_vectors(tmp_path / "nope.txt", ["red"])
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(WordVectorError, match="no vectors"):
        read_word_vectors(tmp_path / "empty.txt", ["red"])
    (tmp_path / "g.txt").write_text("red 1 0 0\n")
    with pytest.raises(WordVectorError, match="label '_-' has no words"):
        label_embeddings(["red", "_-"], tmp_path / "g.txt")


def test_huge_zero_and_cancelling_vectors_are_refused_naming_file_label_and_word(tmp_path):
    """Issue #23: finite but huge values overflowed the float32 norm and stored an all-zero row."""
    path = tmp_path / "g.txt"
    path.write_text("big 3e38 3e38 3e38\nnil 0 0 0\nup 1 0 0\ndown -1 0 0\nred 1 0 0\nlarge 1e20 1e20 0\n")
    for normalize in (True, False):
        with pytest.raises(WordVectorError, match=r"g\.txt: label 'big sky'.*word 'big'.*beyond float32"):
            label_embeddings(["red", "big sky"], path, normalize=normalize, missing="skip-word")
    with pytest.raises(WordVectorError, match=r"g\.txt: label 'nil' gets a zero vector \(word\(s\) 'nil'"):
        label_embeddings(["red", "nil"], path)
    with pytest.raises(WordVectorError, match=r"label 'up down' gets a zero vector \(word\(s\) 'up', 'down'"):
        label_embeddings(["up down"], path)
    # Norm 1.4e20: fits float32, but its float32 squares overflow; the row is still a unit vector.
    out = label_embeddings(["large", "red"], path)
    np.testing.assert_allclose(out[0], [2 ** -0.5, 2 ** -0.5, 0], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [1, 0, 0])
    path.write_text("red 1e39 0 0\n")  # beyond float32 once parsed
    with pytest.raises(WordVectorError, match=r"line 1 \(word 'red'\): values are not finite"):
        label_embeddings(["red"], path)


def test_normalize_rows_names_the_source_and_label():
    from biam.data.packed import l2_normalize
    from biam.data.wordvec import normalize_rows

    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(normalize_rows(x, "e.npy", list("abcd")), l2_normalize(x))
    for row, expect in ((np.zeros(5), "all zeros"), (np.full(5, 3e38), "beyond float32"),
                        (np.array([1, np.nan, 0, 0, 0]), "not finite")):
        bad = x.copy()
        bad[2] = row
        with pytest.raises(WordVectorError, match=rf"e\.npy: label 'c' \(row 2\): .*{expect}"):
            normalize_rows(bad, "e.npy", list("abcd"))
    bad[2] = 0
    assert not normalize_rows(bad, "e.npy", list("abcd"), allow_zero=True)[2].any()


def test_missing_modes_and_the_glove_builder_are_the_same_path(wordfile):
    from biam.data.wordvec import build_from_glove

    labels = ["red circle", "ice_cream", "Paris"]
    np.testing.assert_array_equal(build_from_glove(labels, wordfile), label_embeddings(labels, wordfile, normalize=False))
    mean = label_embeddings(["red zebra"], wordfile, missing="skip-word", normalize=False)
    np.testing.assert_array_equal(mean, [[1, 0, 0]])
    with pytest.raises(OutOfVocabularyError, match="'zebra'"):
        label_embeddings(["zebra"], wordfile, missing="skip-word")
    with pytest.warns(UserWarning, match="zebra"):
        out = label_embeddings(["zebra", "red"], wordfile, missing="zero")
    assert not out[0].any() and out[1].tolist() == [1, 0, 0]
    with pytest.raises(KeyError):  # the CLIs map KeyError and ValueError to exit 2
        label_embeddings(["zebra"], wordfile)
