"""biam-embed-labels end to end: a packed dataset's labels through a random CLIP text encoder, one
label list through word vectors, and its refusals (no weights, an existing --out)."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("open_clip")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from biam.cli.embed_labels import main  # noqa: E402
from biam.data.label_encoders import read_label_encoder  # noqa: E402
from biam.data.packed import read_manifest  # noqa: E402


def test_clip_embeddings_of_a_packed_dataset(tiny_packed, tmp_path, capsys):
    out = tmp_path / "clip.npz"
    zs = tmp_path / "clip_zeroshot.pth"
    rc = main(["--packed", str(tiny_packed), "--clip", "clip_vit_b16", "--random-weights", "0",
               "--template", "a photo of a {}.", "--out", str(out), "--zeroshot-checkpoint", str(zs)])
    assert rc == 0, capsys.readouterr().err
    import torch

    assert torch.load(zs, weights_only=True) == {"model": {}, "method": "clip_zeroshot", "label_encoder":
                                                 "clip_vit_b16:random-seed-0",
                                                 "model_hparams": {"embed_dim": 512, "backbone": "clip_vit_b16"}}
    labels = read_manifest(tiny_packed)["labels"]
    with np.load(out, allow_pickle=False) as z:
        seen, unseen = z["seen"], z["unseen"]
    assert seen.shape == (len(labels["seen"]), 512) and unseen.shape == (len(labels["unseen"]), 512)
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([seen, unseen]), axis=1), 1.0, rtol=1e-5)
    record = read_label_encoder(out)
    assert record["name"] == "clip_vit_b16:random-seed-0" and record["templates"] == "a photo of a {}."
    assert record["weights"] == "clip_vit_b16:open_clip:ViT-B-16:random-seed-0"
    assert "encoder clip_vit_b16:random-seed-0" in capsys.readouterr().out

    # An existing file is kept unless --overwrite.
    before = out.read_bytes()
    assert main(["--packed", str(tiny_packed), "--clip", "clip_vit_b16", "--random-weights", "0",
                 "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before


def test_word_vectors_of_a_label_list(tmp_path, capsys):
    vectors = tmp_path / "glove.txt"
    vectors.write_text("cat 1 0 0\ndog 0 2 0\nhot 0 0 1\n", encoding="utf-8")
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\nhot_dog\n", encoding="utf-8")
    out = tmp_path / "wv.npz"
    assert main(["--labels", str(labels), "--word-vectors", str(vectors), "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as z:
        np.testing.assert_allclose(z["seen"], [[1, 0, 0], [0, 2 / 5 ** 0.5, 1 / 5 ** 0.5]], rtol=1e-6)
        assert z["unseen"].shape == (0, 3)
    assert read_label_encoder(out)["kind"] == "word-vectors"


def test_clip_without_weights_names_both_ways(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\n", encoding="utf-8")
    assert main(["--labels", str(labels), "--clip", "clip_rn50", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert "--weights FILE" in err and "--weights TAG" in err and not (tmp_path / "x.npz").exists()


def test_a_checkpoint_of_another_encoder_is_refused_by_name(tiny_packed, tmp_path, capsys):
    import shutil

    from biam.cli.evaluate import main as evaluate_main
    from biam.cli.train import main as train_main
    from biam.data.label_encoders import save_label_embeddings
    from biam.data.packed import load_embeddings

    from helpers import TINY_MODEL_OPTS

    run = tmp_path / "run"
    opts = TINY_MODEL_OPTS + ["SOLVER.MAX_EPOCHS", "1", "SOLVER.FINETUNE_EPOCHS", "0", "SOLVER.WARMUP_EPOCHS", "0",
                              "EVAL.START_EPOCH", "2"]
    assert train_main([*opts, "DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(run)]) == 0
    ckpt = run / "checkpoints" / "checkpoint_epoch_0001.pth"
    # The same images and labels, the label embeddings (same width) recorded as a CLIP encoder's.
    other = tmp_path / "clip_data"
    shutil.copytree(tiny_packed, other)
    seen, unseen = load_embeddings(other)
    save_label_embeddings(other / "embeddings.npz", seen, unseen, {"name": "clip_vit_b16:0123456789abcdef"})
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(ckpt), *opts, "DATA.ROOT", str(other), "OUTPUT_DIR", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err
    assert "clip_vit_b16:0123456789abcdef" in err and "word vectors (not recorded)" in err and str(ckpt) in err
    # Its own data is fine.
    assert evaluate_main(["--checkpoint", str(ckpt), *opts, "DATA.ROOT", str(tiny_packed),
                          "OUTPUT_DIR", str(tmp_path / "e2")]) == 0
