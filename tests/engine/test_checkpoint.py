"""Atomic checkpoints: complete or absent, pruned, found again, and checked against the model."""

import os

import pytest
import torch

from biam.engine import checkpoint as ckpt
from biam.modeling import BiAM


def tiny():
    return BiAM(channel_dim=16, heads=2, joint_dim=32, embed_dim=8)


def test_save_prune_and_latest(tmp_path):
    d = str(tmp_path / "ckpt")
    owned = []
    for epoch in (1, 2, 3, 10):
        ckpt.save_checkpoint(d, epoch, {"epoch": epoch}, keep=2, owned=owned)
    assert sorted(os.listdir(d)) == ["checkpoint_epoch_0003.pth", "checkpoint_epoch_0010.pth"]
    assert owned == ["checkpoint_epoch_0003.pth", "checkpoint_epoch_0010.pth"]
    assert ckpt.latest_checkpoint(d).endswith("checkpoint_epoch_0010.pth")
    # A leftover temporary file from a killed write is never taken for a checkpoint.
    open(os.path.join(d, "checkpoint_epoch_0011.pth.tmp"), "wb").write(b"half")
    assert ckpt.latest_checkpoint(d).endswith("checkpoint_epoch_0010.pth")


def test_pruning_deletes_only_the_runs_own_checkpoints(tmp_path):
    """Checkpoints of the same naming that the run did not write (another run's) are never pruned."""
    d = tmp_path / "ckpt"
    d.mkdir()
    for epoch in (1, 7, 40):
        (d / f"checkpoint_epoch_{epoch:04d}.pth").write_bytes(b"another run's checkpoint")
    owned = []
    for epoch in (2, 3, 4, 5):
        ckpt.save_checkpoint(str(d), epoch, {"epoch": epoch}, keep=2, owned=owned)
    assert sorted(os.listdir(d)) == ["checkpoint_epoch_0001.pth", "checkpoint_epoch_0004.pth",
                                     "checkpoint_epoch_0005.pth", "checkpoint_epoch_0007.pth",
                                     "checkpoint_epoch_0040.pth"]
    for epoch in (1, 7, 40):
        assert (d / f"checkpoint_epoch_{epoch:04d}.pth").read_bytes() == b"another run's checkpoint"
    # The run's newest is found among its own names, not the foreign epoch 40.
    assert ckpt.latest_owned(str(d), owned).endswith("checkpoint_epoch_0005.pth")
    # Without the run's list nothing is pruned.
    ckpt.save_checkpoint(str(d), 6, {"epoch": 6}, keep=1)
    assert (d / "checkpoint_epoch_0004.pth").exists()


@pytest.mark.parametrize("field, value, expect", [
    ("epoch", "3", "field 'epoch' should be an int"),
    ("epoch", 2.5, "field 'epoch' should be an int"),
    ("best", [0.5, 2], "field 'best' should be a dict"),
    ("best", {"metric": "high", "epoch": 2}, "field 'best.metric' should be a number"),
    ("phase", "warmup", "field 'phase' is 'warmup'"),
    ("optimizer", [1, 2], "field 'optimizer' should be a dict"),
    ("history", {"epoch": 1}, "field 'history' should be a list"),
    ("config", {"SEED": 1}, "field 'config' should be"),
])
def test_training_checkpoint_with_a_mistyped_field_names_file_and_field(tmp_path, field, value, expect):
    state = {"model": {}, "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": 2, "phase": "train",
             "best": {"metric": 0.5, "epoch": 2}, "history": [], "config": "SEED: 1\n"}
    state[field] = value
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    loaded = ckpt.load_checkpoint(str(path))
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.check_training_state(loaded, str(path))
    assert str(path) in str(err.value) and expect in str(err.value)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    model = tiny()
    path = tmp_path / "m.pth"
    torch.save(model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="m.pth"):
        ckpt.load_model_weights(tiny(), str(path))


def test_checkpoint_of_another_config_names_keys_and_shapes(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(BiAM(channel_dim=32, heads=2, joint_dim=32, embed_dim=8).state_dict(), path)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_model_weights(tiny(), str(path))
    msg = str(err.value)
    assert "conv_3X3.body.weight" in msg and "(32, 512, 3, 3)" in msg and "(16, 512, 3, 3)" in msg


def test_plain_state_dict_and_training_checkpoint_both_load(tmp_path):
    src = tiny()
    torch.save(src.state_dict(), tmp_path / "plain.pth")
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "train.pth")
    for name in ("plain.pth", "train.pth"):
        dst = tiny()
        ckpt.load_model_weights(dst, str(tmp_path / name))
        for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
            assert torch.equal(a, b), k


def test_our_files_record_hyperparameters_and_refuse_another_config(tmp_path):
    """Heads and top-k do not show in parameter shapes: only the record catches them."""
    src = BiAM(channel_dim=16, heads=4, topk=3, joint_dim=32, embed_dim=8)
    ckpt.atomic_torch_save(ckpt.model_file(src), str(tmp_path / "model_best.pth"))
    torch.save({"model": src.state_dict(), ckpt.HPARAMS_KEY: src.hparams(), "epoch": 3}, tmp_path / "train.pth")
    for name in ("model_best.pth", "train.pth"):
        assert ckpt.load_checkpoint(str(tmp_path / name))[ckpt.HPARAMS_KEY]["heads"] == 4
        with pytest.raises(ckpt.CheckpointError) as err:
            ckpt.load_model_weights(tiny(), str(tmp_path / name))  # 2 heads, top-k 6
        msg = str(err.value)
        assert name in msg and "MODEL.HEADS: checkpoint 4, config 2" in msg and "MODEL.TOPK: checkpoint 3, config 6" in msg
        assert "CHANNEL_DIM" not in msg  # only what differs
        dst = BiAM(channel_dim=16, heads=4, topk=3, joint_dim=32, embed_dim=8)
        ckpt.load_model_weights(dst, str(tmp_path / name))
        for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
            assert torch.equal(a, b), k
    # A published plain state dict has no record: it loads into the 2-head model (same shapes).
    torch.save(src.state_dict(), tmp_path / "plain.pth")
    ckpt.load_model_weights(tiny(), str(tmp_path / "plain.pth"))


def test_code_in_a_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.remove, (str(tmp_path / "victim"),))

    (tmp_path / "victim").write_text("still here")
    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ckpt.CheckpointError, match="evil.pth"):
        ckpt.load_checkpoint(str(tmp_path / "evil.pth"))
    assert (tmp_path / "victim").exists()


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    d = str(tmp_path)
    ckpt.save_checkpoint(d, 1, {"epoch": 1, "w": torch.ones(3)})

    class Unsaveable:
        def __reduce__(self):
            raise OSError("No space left on device")

    with pytest.raises(ckpt.CheckpointError, match="checkpoint_epoch_0002.pth: write failed.*No space") as err:
        ckpt.save_checkpoint(d, 2, {"epoch": 2, "bad": Unsaveable()})
    assert "earlier checkpoints are untouched" in str(err.value)
    assert sorted(os.listdir(d)) == ["checkpoint_epoch_0001.pth"]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(d))["epoch"] == 1


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    ckpt.save_checkpoint(str(tmp_path), 1, {"rng": ckpt.rng_state()})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    ckpt.set_rng_state(ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path)))["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
