"""Label encoders (biam.data.label_encoders): CLIP BPE tokenisation, the prompt ensemble computed
by hand, word vectors through the one reader, the encoder record in the file and in packed data,
and the refusal of a mixed-up encoder by name. Random CLIP weights; nothing reaches the network."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from biam.backbones import load_backbone  # noqa: E402
from biam.data import label_encoders as le  # noqa: E402
from biam.data.packed import load_embeddings  # noqa: E402
from biam.data.wordvec import label_embeddings  # noqa: E402


@pytest.fixture(scope="module")
def clip_vit():
    return load_backbone("clip_vit_b16", None, 0)[0]


def test_tokenisation_is_clip_bpe():
    tokens = le.tokenize(["a photo of a dog.", "ice cream"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.int64
    # start, "a photo of a dog" ".", end, then zero padding (CLIP's vocabulary ids).
    assert tokens[0, :9].tolist() == [49406, 320, 1125, 539, 320, 1929, 269, 49407, 0]
    assert (tokens[0, 8:] == 0).all()
    assert tokens[1, 0] == 49406 and tokens[1, 3] == 49407  # "ice", "cream": one token each


def test_templates_and_prompts():
    templates = le.imagenet_templates()
    assert len(templates) == 80 and all("{}" in t for t in templates)
    assert templates[0] == "a bad photo of a {}."
    assert le.prompts_for("ice_cream", ["a photo of a {}.", "{}"]) == ["a photo of a ice cream.", "ice cream"]
    with pytest.raises(le.LabelEncoderError, match="no words"):
        le.prompts_for("_ _", ["{}"])


def test_prompt_ensemble_is_the_normalised_mean_of_normalised_prompts(clip_vit):
    templates = ["a photo of a {}.", "a drawing of the {}."]
    got = le.clip_text_embeddings(clip_vit, ["dog", "ice_cream"], templates, "ViT-B-16")
    assert got.shape == (2, 512) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    with torch.no_grad():
        f = clip_vit.encode_text(le.tokenize(["a photo of a ice cream.", "a drawing of the ice cream."]))
    f = torch.nn.functional.normalize(f, dim=-1).mean(0)
    np.testing.assert_allclose(got[1], torch.nn.functional.normalize(f, dim=0).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(le.LabelEncoderError, match="'{}'"):
        le.clip_text_embeddings(clip_vit, ["dog"], ["no placeholder"], "ViT-B-16")


def test_word_vectors_use_the_one_reader(tmp_path):
    path = tmp_path / "vectors.txt"
    rng = np.random.default_rng(0)
    path.write_text("".join(f"{w} " + " ".join(f"{v:.4f}" for v in rng.normal(size=5)) + "\n"
                            for w in ("dog", "ice", "cream")), encoding="utf-8")
    matrix, record = le.encode_labels_word_vectors(["dog", "ice_cream"], path)
    np.testing.assert_array_equal(matrix, label_embeddings(["dog", "ice_cream"], path, progress=False))
    assert record["kind"] == "word-vectors" and record["file"] == "vectors.txt" and len(record["sha256"]) == 64
    assert record["name"].startswith("word-vectors:vectors.txt:")


def test_record_travels_with_the_file_and_the_packed_data(tiny_packed, tmp_path):
    import shutil

    packed = tmp_path / "packed"
    shutil.copytree(tiny_packed, packed)
    assert le.packed_label_encoder(packed) is None  # written before records: word vectors
    seen, unseen = load_embeddings(packed)
    record = {"name": "clip_vit_b16:0123456789abcdef", "kind": "clip-text", "templates": "imagenet-80"}
    le.save_label_embeddings(packed / "embeddings.npz", seen, unseen, record)
    assert le.packed_label_encoder(packed) == record
    first = (packed / "embeddings.npz").read_bytes()
    le.save_label_embeddings(packed / "embeddings.npz", seen, unseen, record)
    assert (packed / "embeddings.npz").read_bytes() == first  # a rerun writes the same bytes
    again = load_embeddings(packed)  # the datasets' reader is unaffected by the extra array
    np.testing.assert_array_equal(again[0], seen) and np.testing.assert_array_equal(again[1], unseen)
    with pytest.raises(ValueError, match="needs a 'name'"):
        le.save_label_embeddings(tmp_path / "x.npz", seen, unseen, {})


def test_mixed_up_encoder_is_refused_by_name():
    clip = "clip_vit_b16:0123456789abcdef"
    le.check_label_encoder(clip, clip, "run/model_best.pth", "packed/nus")
    le.check_label_encoder(None, None, "published.pth", "packed/nus")
    le.check_label_encoder(None, "word-vectors:glove.6B.300d.txt:ab", "published.pth", "packed/own")
    with pytest.raises(le.LabelEncoderError) as err:
        le.check_label_encoder(clip, "clip_rn50:fedcba9876543210", "run/model_best.pth", "packed/nus")
    msg = str(err.value)
    assert "run/model_best.pth" in msg and "packed/nus" in msg and clip in msg and "clip_rn50:fedcba9876543210" in msg
    with pytest.raises(le.LabelEncoderError, match="not recorded"):
        le.check_label_encoder(None, clip, "published.pth", "packed/nus")
    with pytest.raises(le.LabelEncoderError):
        le.check_label_encoder("word-vectors:glove.6B.300d.txt:ab", "word-vectors:cc.en.300.vec:cd", "a.pth", "d")
