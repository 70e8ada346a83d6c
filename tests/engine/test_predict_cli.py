"""biam-predict end to end on generated images with a random BiAM checkpoint and a seeded random
VGG19: JSON with sorted top-K scores equal to BiAM's own forward on torchvision's features,
unreadable images listed (exit 1), real PNG attention figures of the documented size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from biam.config import load_cfg
from biam.backbones.vgg19 import SceneHead
from biam.modeling import BiAM, build_model
from biam.cli.predict import main
from biam.cli.predict import split_inputs
from biam.engine.visualize import figure_size

LABELS = ["sky", "red car", "dog", "water"]


def _glove(path, words, seed=3):
    rng = np.random.default_rng(seed)
    vecs = {w: rng.normal(size=300).astype(np.float32) for w in words}
    path.write_text("".join(w + " " + " ".join(repr(float(v)) for v in vec) + "\n" for w, vec in vecs.items()))
    return vecs


def _images(folder):
    rng = np.random.default_rng(0)
    folder.mkdir()
    a = folder / "a.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(a)
    (folder / "sub").mkdir()
    b = folder / "sub" / "b.png"
    Image.fromarray(rng.integers(0, 256, (80, 50, 3), dtype=np.uint8)).save(b)
    return [a, b]


def test_split_inputs_separates_paths_and_overrides(tmp_path):
    assert split_inputs(["x.jpg", "dir", "MODEL.HEADS", "4", "MODEL.TOPK", "3"]) == (
        ["x.jpg", "dir"], ["MODEL.HEADS", "4", "MODEL.TOPK", "3"])
    with pytest.raises(ValueError, match="MODEL.TOPK has no value"):
        split_inputs(["x.jpg", "MODEL.TOPK"])


def test_predict_json_and_attention_figures(tmp_path, capsys):
    import torchvision
    from torchvision import transforms

    images = _images(tmp_path / "imgs")
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    vecs = _glove(tmp_path / "glove.txt", ["sky", "red", "car", "dog", "water"])
    torch.manual_seed(5)
    cfg = load_cfg(None, ["MODEL.HEADS", "4"])
    model = build_model(cfg).eval()
    torch.save(model.state_dict(), tmp_path / "model.pth")  # a plain state dict, like the published files

    out = tmp_path / "pred.json"
    figs = tmp_path / "figs"
    rc = main([str(tmp_path / "imgs"), str(corrupt), "MODEL.HEADS", "4", "--labels", str(tmp_path / "labels.txt"),
               "--glove", str(tmp_path / "glove.txt"), "--checkpoint", str(tmp_path / "model.pth"),
               "--random-vgg", "0", "--top-k", "3", "--json", "--output", str(out), "--visualize", str(figs),
               "--device", "cpu", "--batch-size", "2"])
    assert rc == 1  # one unreadable image
    assert "unreadable image" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert [r["image"] for r in result["unreadable"]] == [str(corrupt)]
    assert [r["image"] for r in result["results"]] == [str(p) for p in images]
    assert result["vgg_weights"] == "random-seed-0"

    # Independent reference: torchvision VGG19 (same seed) features, BiAM.forward, L2-normalised GloVe means.
    torch.manual_seed(0)
    vgg = torchvision.models.vgg19(weights=None).eval()
    tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in images])
    emb = np.stack([vecs["sky"], (vecs["red"] + vecs["car"]) / 2, vecs["dog"], vecs["water"]])
    emb = torch.from_numpy(emb / np.linalg.norm(emb, axis=1, keepdims=True)).float()
    with torch.no_grad():
        fmap = vgg.features[:-1](x)
        expected = model(fmap, emb, SceneHead.from_torchvision(vgg)(fmap))
    for row, r in zip(expected, result["results"]):
        scores = [t["score"] for t in r["labels"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        top = torch.topk(row, 3)
        assert [t["label"] for t in r["labels"]] == [LABELS[i] for i in top.indices.tolist()]
        np.testing.assert_allclose(scores, top.values.numpy(), rtol=1e-4, atol=1e-5)

    # One real PNG per readable image, of the documented size, not blank, named as biam-predict's
    # own (<stem>_attention.png) and listed in the folder's record.
    pngs = sorted(figs.glob("*.png"))
    assert [p.name for p in pngs] == ["a_attention.png", "b_attention.png"]
    assert [r["figure"] for r in result["results"]] == [str(figs / "a_attention.png"), str(figs / "b_attention.png")]
    assert json.loads((figs / "biam-predict.json").read_text())["figures"] == ["a_attention.png", "b_attention.png"]
    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == figure_size(3) == (1200, 350)
            assert np.asarray(im.convert("RGB")).std() > 10


def test_wrong_embedding_rows_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("sky\ndog\n")
    np.save(tmp_path / "emb.npy", np.ones((3, 300), dtype=np.float32))
    torch.save(BiAM().state_dict(), tmp_path / "model.pth")
    img = tmp_path / "x.png"
    Image.new("RGB", (20, 20)).save(img)
    rc = main([str(img), "--labels", str(tmp_path / "labels.txt"), "--embeddings", str(tmp_path / "emb.npy"),
               "--checkpoint", str(tmp_path / "model.pth"), "--random-vgg", "0"])
    assert rc == 2
    assert "emb.npy: embeddings of shape (3, 300), expected (2, 300)" in capsys.readouterr().err


def _predict_setup(tmp_path):
    images = _images(tmp_path / "imgs")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    np.save(tmp_path / "emb.npy", np.random.default_rng(1).normal(size=(len(LABELS), 300)).astype(np.float32))
    torch.manual_seed(5)
    torch.save(BiAM().state_dict(), tmp_path / "model.pth")
    common = ["--labels", str(tmp_path / "labels.txt"), "--embeddings", str(tmp_path / "emb.npy"),
              "--checkpoint", str(tmp_path / "model.pth"), "--random-vgg", "0", "--device", "cpu", "--top-k", "2"]
    return images, common


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_visualize_never_writes_over_inputs_or_files_it_did_not_write(tmp_path, capsys):
    """The issue's case: --visualize DIR with DIR the input folder used to overwrite the images."""
    images, common = _predict_setup(tmp_path)
    inputs = tmp_path / "imgs"
    before = _snapshot(inputs)
    # The input folder itself, and a folder above an input, are refused before anything is written.
    for target in (inputs, inputs / "sub", tmp_path):
        assert main([str(inputs), *common, "--visualize", str(target)]) == 2
        assert "holds the input image" in capsys.readouterr().err
    assert _snapshot(inputs) == before
    # A folder holding someone else's files is refused, naming them and what to do.
    other = tmp_path / "other"
    other.mkdir()
    (other / "a_attention.png").write_bytes(b"my own figure")
    assert main([str(inputs), *common, "--visualize", str(other)]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "a_attention.png" in err and "--overwrite" in err
    # With --overwrite it writes beside them, under new names; the foreign file is untouched.
    assert main([str(inputs), *common, "--visualize", str(other), "--overwrite"]) == 0
    assert (other / "a_attention.png").read_bytes() == b"my own figure"
    assert sorted(p.name for p in other.glob("*.png")) == ["a-1_attention.png", "a_attention.png", "b_attention.png"]
    # Its own folder may be written again: its figures are replaced, nothing else is added.
    figs = tmp_path / "figs"
    assert main([str(inputs), *common, "--visualize", str(figs)]) == 0
    first = _snapshot(figs)
    assert main([str(inputs), *common, "--visualize", str(figs)]) == 0
    assert sorted(_snapshot(figs)) == sorted(first)
    assert _snapshot(inputs) == before


def test_output_file_is_never_an_input_and_not_replaced_without_overwrite(tmp_path, capsys):
    images, common = _predict_setup(tmp_path)
    original = images[0].read_bytes()
    assert main([str(images[0]), *common, "--output", str(images[0])]) == 2
    assert "is one of the input images" in capsys.readouterr().err
    assert images[0].read_bytes() == original
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert main([str(images[0]), *common, "--output", str(notes)]) == 2
    assert "already exists" in capsys.readouterr().err and notes.read_text() == "keep me"
    assert main([str(images[0]), *common, "--output", str(notes), "--overwrite"]) == 0
    assert notes.read_text().startswith(str(images[0]))


def test_label_file_that_is_not_utf8_is_named(tmp_path, capsys):
    images, common = _predict_setup(tmp_path)
    (tmp_path / "labels.txt").write_bytes("sky\nca\u00f1on\ndog\nwater\n".encode("latin-1"))
    assert main([str(images[0]), *common]) == 2
    err = capsys.readouterr().err
    assert "labels.txt: line 2: byte 0xf1 is not UTF-8" in err and "Traceback" not in err


def test_config_pairs_after_the_options_are_read(tmp_path, capsys):
    """Issue #23 item 8: `sh scripts/demo_own_data.sh SOLVER.MAX_EPOCHS 30` passes the pair on to
    biam-predict after its options."""
    images, common = _predict_setup(tmp_path)
    assert main([str(images[0]), *common, "--json", "SOLVER.MAX_EPOCHS", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["image"] == str(images[0])
    assert main([str(images[0]), *common, "MODEL.NO_SUCH_KEY", "1"]) == 2  # read as config, and checked
    assert "MODEL.NO_SUCH_KEY" in capsys.readouterr().err


@pytest.mark.parametrize("text, expect", [
    ("", "no labels (the file is empty or holds only blank lines)"),
    ("\n  \n\n", "no labels (the file is empty or holds only blank lines)"),
    ("sky\nred\u2028car\ndog\nwater\n", "line 2 holds U+2028 (LINE SEPARATOR)"),
    ("sky\nred car\ndog\x1fx\nwater\n", "line 3 holds U+001F"),
])
def test_empty_label_file_or_a_line_separator_in_a_label_is_exit_2(tmp_path, capsys, text, expect):
    images, common = _predict_setup(tmp_path)
    (tmp_path / "labels.txt").write_text(text, encoding="utf-8")
    figs = tmp_path / "figs"
    assert main([str(images[0]), *common, "--visualize", str(figs)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'labels.txt'}: " in err and expect in err and "Traceback" not in err
    assert not figs.exists()  # refused before any folder is made


def test_figures_of_a_killed_visualize_run_are_ours_on_the_rerun(tmp_path):
    """Kill -9 a `python -m biam.cli.predict --visualize` once its first figure exists: the record
    already lists it, so the rerun (no --overwrite) replaces the figures instead of refusing them
    or numbering new ones beside them."""
    import os
    import signal
    import subprocess
    import sys
    import time

    _images(tmp_path / "imgs")
    rng = np.random.default_rng(2)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"c{i:02d}.png")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    np.save(tmp_path / "emb.npy", rng.normal(size=(len(LABELS), 300)).astype(np.float32))
    torch.save(BiAM().state_dict(), tmp_path / "model.pth")
    figs = tmp_path / "figs"
    cmd = [sys.executable, "-m", "biam.cli.predict", str(tmp_path / "imgs"), "--labels", str(tmp_path / "labels.txt"),
           "--embeddings", str(tmp_path / "emb.npy"), "--checkpoint", str(tmp_path / "model.pth"), "--random-vgg", "0",
           "--device", "cpu", "--batch-size", "1", "--top-k", "2", "--visualize", str(figs),
           "SOLVER.MAX_EPOCHS", "30"]  # a trailing KEY VALUE pair, as scripts/demo_own_data.sh passes one
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 300
        while not any(figs.glob("*_attention.png")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = sorted(p.name for p in figs.glob("*_attention.png"))
    assert before and len(before) < 8  # killed part-way
    record = json.loads((figs / "biam-predict.json").read_text())["figures"]
    assert set(before) <= set(record)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = sorted(p.name for p in figs.glob("*_attention.png"))
    assert len(after) == 8 and not any("-1_" in name for name in after)
    assert set(before) <= set(after)
    assert json.loads((figs / "biam-predict.json").read_text())["figures"] == after


def test_glove_missing_zero_warns_once_and_tags(tmp_path, capsys):
    images, common = _predict_setup(tmp_path)
    _glove(tmp_path / "glove.txt", ["sky", "red", "car", "dog"])  # no "water"
    common = [c if c != str(tmp_path / "emb.npy") else str(tmp_path / "glove.txt") for c in common]
    common[common.index("--embeddings")] = "--glove"
    assert main([str(images[0]), *common, "--glove-missing", "zero"]) == 0
    err = capsys.readouterr().err
    assert "biam-predict: warning:" in err and "['water']" in err and "Traceback" not in err
    assert main([str(images[0]), *common]) == 2
    assert "glove.txt: 1 of 4 labels are not in the word-vector file" in capsys.readouterr().err


def test_predictor_from_checkpoint_gives_the_commands_results(tmp_path, capsys):
    from biam.engine import Predictor

    images, common = _predict_setup(tmp_path)
    assert main([str(images[0]), *common, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["results"][0]["labels"]
    p = Predictor.from_checkpoint(tmp_path / "model.pth", device="cpu", random_weights=0)
    result = p.tag([images[0]], LABELS, k=2, embeddings=tmp_path / "emb.npy", region_scores=True)
    assert result[str(images[0])].labels == [(t["label"], t["score"]) for t in shown]
    assert result.images[0].region_scores.shape == (len(LABELS), *p.backbone.grid)
    with pytest.raises(ValueError, match="labels need embeddings"):
        p.tag([images[0]], LABELS)


def test_a_system_refused_write_exits_5_naming_the_file(tmp_path, capsys):
    images, common = _predict_setup(tmp_path)
    (tmp_path / "plain_file").write_text("not a folder")
    out = tmp_path / "plain_file" / "tags.txt"  # its parent is a file: NotADirectoryError, an OSError
    assert main([str(images[0]), *common, "--output", str(out)]) == 5
    err = capsys.readouterr().err
    assert "system error" in err and str(out) in err and "Traceback" not in err


def test_attention_figures_are_written_whole_and_never_through_a_link(tmp_path):
    from biam.engine.visualize import save_attention_figure
    from biam.utils.io import LinkRefusedError

    img = Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
    maps = np.random.default_rng(0).normal(size=(2, 14, 14)).astype(np.float32)
    out = save_attention_figure(img, maps, ["a", "b"], [0.5, 0.25], tmp_path / "fig.png")
    assert Image.open(out).size == figure_size(2) and not (tmp_path / "fig.png.tmp").exists()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "link.png").symlink_to(victim)
    with pytest.raises(LinkRefusedError):
        save_attention_figure(img, maps, ["a", "b"], [0.5, 0.25], tmp_path / "link.png")
    assert victim.read_text() == "keep"


def test_weights_and_random_weights_are_the_old_vgg_flags_under_new_names(capsys):
    from biam.cli.predict import build_parser

    parser = build_parser()
    base = ["--labels", "l.txt", "--glove", "g.txt", "--checkpoint", "c.pth"]
    for new, old, value, dest in (("--weights", "--vgg-weights", "w.pth", "vgg_weights"),
                                  ("--random-weights", "--random-vgg", "3", "random_vgg")):
        a, b = parser.parse_args([*base, new, value]), parser.parse_args([*base, old, value])
        assert getattr(a, dest) == getattr(b, dest) == (int(value) if dest == "random_vgg" else value)
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--weights", "w.pth", "--random-vgg", "0"])  # still one or the other
    assert "not allowed with argument" in capsys.readouterr().err
    text = parser.format_help()
    assert "--weights FILE, --vgg-weights FILE" in text and "clip_vit_b16" in text and "vgg19" in text
