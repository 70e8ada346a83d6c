"""Published checksums: the real release files pass, a changed or truncated copy fails."""

import shutil

from biam.cli.checksums import main
from biam.data.checksums import verify_file, verify_tree
from biam.datasets import known_release_files

KNOWN_FILES = known_release_files()

# Where each known file sits in ../shared/data (flatter than the release layout).
SHARED_NAMES = {
    "NUS-WIDE/NUS_WID_Tags/TagList1k.txt": "NUS-WIDE/TagList1k.txt",
    "NUS-WIDE/ConceptsList/Concepts81.txt": "NUS-WIDE/Concepts81.txt",
    "NUS-WIDE/wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300": "NUS-WIDE/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300",
    "NUS-WIDE/test_img_names.pkl": "NUS-WIDE/test_img_names.pkl",
    "OpenImages/2018_04/class-descriptions.csv": "OpenImages/class-descriptions.csv",
    "OpenImages/2018_04/classes-trainable.txt": "OpenImages/classes-trainable.txt",
    "OpenImages/2018_04/top_400_unseen.csv": "OpenImages/top_400_unseen.csv",
    "OpenImages/2018_04/unseen_labels.pkl": "OpenImages/unseen_labels.pkl",
}


def _lay_out(shared_data, root):
    for key, rel in SHARED_NAMES.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / rel, root / key)


def test_real_release_files_match(shared_data, tmp_path):
    """Uses the real files of ../shared/data (skips without them)."""
    assert set(SHARED_NAMES) == set(KNOWN_FILES)
    for key, rel in SHARED_NAMES.items():
        assert verify_file(str(shared_data / rel), key, KNOWN_FILES[key]) is None, key
    _lay_out(shared_data, tmp_path)
    report = verify_tree(str(tmp_path), KNOWN_FILES)
    assert len(report["ok"]) == len(KNOWN_FILES) and not report["bad"] and not report["missing"]
    assert main(["--root", str(tmp_path)]) == 0


def test_changed_and_truncated_files_fail(tmp_path, capsys):
    key = "NUS-WIDE/ConceptsList/Concepts81.txt"
    path = tmp_path / key
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * KNOWN_FILES[key].size)  # right size, wrong content
    assert "sha256" in verify_file(str(path), key, KNOWN_FILES[key])
    path.write_bytes(b"airport\n")
    assert "truncated" in verify_file(str(path), key, KNOWN_FILES[key])
    assert main(["--root", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "BAD" in captured.err and "Concepts81.txt" in captured.err
    assert "not present" in captured.out


def test_packed_checksum_command(tmp_path, capsys):
    """`biam-checksums --packed DIR`: the full SHA-256 check of every shard."""
    import h5py
    import numpy as np

    from biam.data.packed import PackedWriter

    w = PackedWriter(tmp_path, "train", dataset="toy", seen_labels=["a"], unseen_labels=["b"], shard_size=4)
    w.append(np.ones((6, 512, 196), np.float32), np.zeros((6, 2), np.int8), [f"n{i}" for i in range(6)])
    w.close()
    assert main(["--packed", str(tmp_path)]) == 0
    assert "split 'train', 2 shards" in capsys.readouterr().out
    with h5py.File(tmp_path / "train-00001.h5", "r+") as f:  # still valid HDF5 and valid labels
        f["regions"][0, 0, 0] = 3.0
    assert main(["--packed", str(tmp_path)]) == 1
    assert "train-00001.h5: sha256" in capsys.readouterr().err
