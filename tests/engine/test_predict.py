"""The Predictor (biam.engine.predict) from Python, on a 7 x 7-grid test backbone: paths and PIL
images tagged as BiAM's own forward scores them, region scores on the backbone's grid, attention
figures drawn from them, and one label embedding for training and prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL_OPTS
from PIL import Image
from torch import nn

from biam.backbones import Backbone
from biam.config import load_cfg
from biam.data.packed import l2_normalize
from biam.data.wordvec import WordVectorError, label_embeddings
from biam.datasets.nus_wide.images import load_label_embeddings as nus_wide_label_embeddings
from biam.engine import Predictor
from biam.engine.predict import FigureFolder, LabelSet, embed_labels, read_label_file
from biam.engine.visualize import figure_size, save_attention_figure
from biam.extraction.extractor import FeatureExtractor
from biam.modeling import build_model

LABELS = ["sky", "red car", "dog", "water", "tree"]
EMBED = 12


class _Net(nn.Module):
    """28 x 28 images -> (B, 8, 7, 7) regions; the scene is their mean through a linear layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.fc = nn.Linear(8, 16)


class _Scene(nn.Module):
    def __init__(self, fc):
        super().__init__()
        self.fc = fc

    def forward(self, fmap):
        return self.fc(fmap.mean(dim=(2, 3)))


GRID7 = Backbone(name="grid7-test", input_size=28, grid=(7, 7), channels=8, scene_dim=16, scene_from_regions=False,
                 weights_file="none.pth", load_net=lambda weights, seed: _Net(),
                 region_extractor=lambda net: net.body, scene_head=lambda net: _Scene(net.fc))


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    cfg = load_cfg(None, TINY_MODEL_OPTS + ["MODEL.EMBED_DIM", str(EMBED), "MODEL.TOPK", "4"])
    model = build_model(cfg, GRID7)
    return Predictor(model, FeatureExtractor(_Net(), GRID7), GRID7, "cpu", embed_dim=EMBED)


def _pictures(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    pil = Image.fromarray(rng.integers(0, 256, (50, 20, 3), dtype=np.uint8))
    return path, pil


def test_tag_paths_and_pil_images_as_the_model_scores_them(predictor, tmp_path):
    path, pil = _pictures(tmp_path)
    emb = np.random.default_rng(1).normal(size=(len(LABELS), EMBED)).astype(np.float32)
    missing = tmp_path / "missing.jpg"
    result = predictor.tag([path, pil, missing], LABELS, k=3, embeddings=emb, region_scores=True)
    assert [e.name for e in result.images] == [str(path), "<image 1>"]
    assert result.unreadable[0][0] == str(missing) and "FileNotFoundError" in result.unreadable[0][1]
    # Independent reference: the extractor's features through BiAM.forward, embeddings L2-normalised.
    x = torch.stack([predictor.transform(Image.open(path).convert("RGB")), predictor.transform(pil)])
    with torch.no_grad():
        regions, scene = predictor.extractor(x)
        expected = predictor.model(regions, torch.from_numpy(l2_normalize(emb)), scene)
    for row, entry in zip(expected, result.images):
        top = torch.topk(row, 3)
        assert [label for label, _ in entry.labels] == [LABELS[i] for i in top.indices.tolist()]
        np.testing.assert_allclose([s for _, s in entry.labels], top.values.numpy(), rtol=1e-5, atol=1e-6)
        assert entry.region_scores.shape == (len(LABELS), 7, 7)  # the backbone's grid, not 14 x 14
    assert result[str(path)].labels == result.as_dict()[str(path)]
    # attention(): every label's region scores of one image, in label order, on the grid.
    maps = predictor.attention(path, LABELS, embeddings=emb)
    np.testing.assert_allclose(maps, result.images[0].region_scores, rtol=1e-5, atol=1e-6)
    # The map of a label is its region scores, region r = row * 7 + col.
    with torch.no_grad():
        flat = predictor.model.region_scores(regions, torch.from_numpy(l2_normalize(emb)), scene)[0, :, 2]
    np.testing.assert_allclose(maps[2].reshape(-1), flat.numpy(), rtol=1e-5, atol=1e-6)


def test_visualize_draws_a_7x7_grid_figure(predictor, tmp_path):
    path, pil = _pictures(tmp_path)
    labels = embed_labels(LABELS, EMBED, embeddings=np.eye(len(LABELS), EMBED, dtype=np.float32))
    assert isinstance(labels, LabelSet)
    out = predictor.visualize(pil, labels, tmp_path / "figs" / "pil.png", k=2)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == figure_size(2)
        assert np.asarray(im.convert("RGB")).std() > 10
    # The figure functions take (K, rows, cols), or (K, rows * cols) / (rows * cols, K) with the grid.
    maps = np.zeros((2, 7, 7), dtype=np.float32)
    maps[0, 0, 0] = maps[1, 6, 6] = 1.0  # hot corners: top left for label 0, bottom right for label 1
    a = save_attention_figure(path, maps, ["x", "y"], [0.5, 0.25], tmp_path / "fig_a.png")
    b = save_attention_figure(path, maps.reshape(2, 49).T, ["x", "y"], [0.5, 0.25], tmp_path / "fig_b.png", grid=(7, 7))
    with Image.open(a) as im_a, Image.open(b) as im_b:
        assert im_a.size == figure_size(2)
        px = np.asarray(im_a.convert("RGB")).astype(int)
        np.testing.assert_array_equal(px, np.asarray(im_b.convert("RGB")))
    # Panels of 300 px after the image's: the two labels' maps (opposite corners) are drawn differently.
    assert np.abs(px[:, 300:600] - px[:, 600:900]).mean() > 1  # 2.9 measured; mostly white margins
    with pytest.raises(ValueError, match=r"region_scores must be .*got \(2, 49\) with grid=None"):
        save_attention_figure(path, maps.reshape(2, 49), ["x", "y"], [0.5, 0.25], tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_figure_folder_lists_each_figure_before_it_is_written(predictor, tmp_path):
    import json

    path, pil = _pictures(tmp_path)
    emb = np.eye(len(LABELS), EMBED, dtype=np.float32)
    folder = tmp_path / "figs"
    figures = FigureFolder(folder, [path])
    result = predictor.tag([path, pil], LABELS, k=2, embeddings=emb, figures=figures)
    # Not closed (as after a kill): the record already lists both figures.
    assert json.loads((folder / "biam-predict.json").read_text())["figures"] == ["a_attention.png",
                                                                                 "image-1_attention.png"]
    assert [Path(e.figure).name for e in result.images] == ["a_attention.png", "image-1_attention.png"]
    figures.close()


def test_training_and_prediction_embed_labels_the_same(tmp_path):
    """One word-vector reader: extract_own.py (label_embeddings), the NUS-WIDE / Open Images
    extractors (--glove, raw rows normalised when loaded) and the Predictor give one matrix."""
    rng = np.random.default_rng(4)
    words = ["sky", "Red", "car", "dog", "water", "tree"]
    glove = tmp_path / "glove.txt"
    glove.write_text("".join(w + " " + " ".join(repr(float(v)) for v in rng.normal(size=EMBED)) + "\n" for w in words))
    names = ["sky", "red car", "Dog", "water_tree"]
    own = label_embeddings(names, glove, progress=False)
    seen, unseen = nus_wide_label_embeddings(Path("unused"), np.arange(2), names[:2], names[2:], glove=str(glove))
    predicted = embed_labels(names, EMBED, word_vectors=glove).embeddings.numpy()
    np.testing.assert_array_equal(predicted, own)
    np.testing.assert_array_equal(predicted, l2_normalize(np.concatenate([seen, unseen])))
    # The same checks on every path: a zero vector is refused naming the file, label and word.
    glove.write_text(glove.read_text() + "nothing " + " ".join(["0"] * EMBED) + "\n")
    for embed in (lambda: label_embeddings(["sky", "nothing"], glove),
                  lambda: embed_labels(["sky", "nothing"], EMBED, word_vectors=glove)):
        with pytest.raises(WordVectorError, match=r"glove\.txt: label 'nothing' gets a zero vector \(word\(s\) 'nothing'"):
            embed()
    with pytest.raises(WordVectorError, match=r"the embeddings array: label 'b' \(row 1\): .*beyond float32"):
        embed_labels(["a", "b"], 2, embeddings=np.array([[1, 0], [3e38, 3e38]], dtype=np.float32))


@pytest.mark.parametrize("text, expect", [
    ("", "no labels"), ("\n \n\n", "no labels"),
    ("sky\nred\u2028car\n", r"line 2 holds U\+2028 \(LINE SEPARATOR\)"),
    ("sky\ndog\u2029\n", r"line 2 holds U\+2029 \(PARAGRAPH SEPARATOR\)"),
    ("a\x85b\nsky\n", r"line 1 holds U\+0085"),
    ("sky\nbad\x0bname\n", r"line 2 holds U\+000B"),
    ("sky\n\ndog\n", "line 2 is empty"), ("sky\ndog\nsky\n", "appears twice"),
])
def test_label_file_edge_cases_are_refused_naming_the_file(tmp_path, text, expect):
    path = tmp_path / "labels.txt"
    path.write_text(text, encoding="utf-8", newline="")
    with pytest.raises(ValueError, match=expect) as err:
        read_label_file(path)
    assert str(path) in str(err.value)


def test_label_file_keeps_crlf_bom_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffsky\r\n  red car \r\ncañon\r\n\r\n".encode("utf-8"))
    assert read_label_file(path) == ["sky", "red car", "cañon"]


def test_from_checkpoint_takes_the_method_the_checkpoint_records(tmp_path):
    from biam.engine.checkpoint import CheckpointError, atomic_torch_save, model_file
    from biam.modeling.fast0tag import Fast0Tag

    opts = ["MODEL.JOINT_DIM", "16", "MODEL.EMBED_DIM", "300"]
    model = build_model(load_cfg(None, ["MODEL.NAME", "fast0tag", *opts]), "vgg19")
    atomic_torch_save(model_file(model), str(tmp_path / "f0t.pth"))
    # MODEL.NAME not given: the recorded method, its weights loaded.
    p = Predictor.from_checkpoint(tmp_path / "f0t.pth", device="cpu", random_weights=0, opts=opts)
    assert isinstance(p.model, Fast0Tag)
    torch.testing.assert_close(p.model.state_dict()["net.0.weight"], model.state_dict()["net.0.weight"])
    # Chosen by the user (here in a config file): kept, and the checkpoint of another method refused.
    (tmp_path / "biam.yaml").write_text("MODEL:\n  NAME: biam\n")
    with pytest.raises(CheckpointError, match="fast0tag"):
        Predictor.from_checkpoint(tmp_path / "f0t.pth", device="cpu", random_weights=0,
                                  config_file=str(tmp_path / "biam.yaml"), opts=opts)


def test_a_16bit_png_is_tagged_the_same_as_a_file_and_as_a_pil_image(predictor, tmp_path):
    from biam.data.images import to_rgb

    rng = np.random.default_rng(4)
    path = tmp_path / "deep.png"
    Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16)).save(path)  # a 16-bit greyscale PNG
    opened = Image.open(path)
    assert opened.mode in ("I", "I;16")  # convert("RGB") would clip it to white
    emb = np.random.default_rng(1).normal(size=(len(LABELS), EMBED)).astype(np.float32)
    result = predictor.tag([path, opened], LABELS, k=3, embeddings=emb)
    x = predictor.transform(to_rgb(Image.open(path), path))[None]
    with torch.no_grad():
        regions, scene = predictor.extractor(x)
        expected = predictor.model(regions, torch.from_numpy(l2_normalize(emb)), scene)[0]
    top = torch.topk(expected, 3)
    for entry in result.images:
        assert [label for label, _ in entry.labels] == [LABELS[i] for i in top.indices.tolist()]
        np.testing.assert_allclose([s for _, s in entry.labels], top.values.numpy(), rtol=1e-5, atol=1e-6)
    # The figure of a PIL image shows it as the model saw it.
    fig = predictor.visualize(opened, LABELS, tmp_path / "deep_fig.png", k=2, embeddings=emb)
    assert Path(fig).is_file()
