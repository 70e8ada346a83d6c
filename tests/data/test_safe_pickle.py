"""Tests of biam.data.safe_pickle: numpy arrays load, anything that could run code is refused."""

import os
import pickle
import subprocess

import numpy as np
import pytest

from biam.utils.safe_pickle import UnsafePickleError, safe_load, safe_loads


class _RunsShell:
    """Unpickling this would call os.system with a command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsSubprocess:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_arrays_and_containers_roundtrip(tmp_path, protocol):
    obj = {
        "img_names": ["a b.jpg", "ü-x.jpg"],
        "emb": [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones((2, 4), np.float32)],
        "ids": np.array(["/m/01", "/m/02"], dtype=object),
        "scalar": np.float32(1.5),
        "t": (1, 2.0, None, True),
    }
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    back = safe_load(path)
    assert back["img_names"] == obj["img_names"]
    np.testing.assert_array_equal(back["emb"][0], obj["emb"][0])
    assert back["emb"][0].dtype == np.float32
    assert list(back["ids"]) == ["/m/01", "/m/02"]
    assert back["scalar"] == np.float32(1.5)
    assert back["t"] == (1, 2.0, None, True)


@pytest.mark.parametrize("cls", [_RunsShell, _RunsSubprocess])
def test_code_running_pickle_is_refused_and_does_not_run(tmp_path, cls):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([np.zeros(3), cls(str(marker))], protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        safe_load(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "system" in msg or "call" in msg
    assert not marker.exists()


def test_codecs_encode_only_text_codecs():
    # A pickle calling _codecs.encode with a non-text codec is refused.
    data = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x06\x00\x00\x00base64q\x02\x86q\x03Rq\x04."
    with pytest.raises(UnsafePickleError, match="codec"):
        safe_loads(data, "codec.pkl")


def test_corrupt_and_missing(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(list(range(100)))[:20])
    with pytest.raises(pickle.UnpicklingError, match="cut.pkl"):
        safe_load(path)
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        safe_load(tmp_path / "nope.pkl")


def test_released_pickles_load(shared_data):
    """Uses the real release files in ../shared/data (embedding pickle, names, unseen ids)."""
    emb = safe_load(shared_data / "NUS-WIDE" / "NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300")
    assert [e.shape for e in emb] == [(1000, 300), (81, 300)]
    names = safe_load(shared_data / "NUS-WIDE" / "test_img_names.pkl")
    assert len(names["img_names"]) == 107859
    ids = safe_load(shared_data / "OpenImages" / "unseen_labels.pkl")
    assert ids.shape == (2594,) and str(ids[0]).startswith("/m/")


def _max_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name,data,match", [
    # bytes(1_000_000_000): 29 bytes that would allocate a gigabyte.
    ("bytes_count.pkl", b"\x80\x02c__builtin__\nbytes\nJ\x00\xca\x9a\x3b\x85R.", "bytes"),
    ("bytes_count_py3.pkl", b"\x80\x02cbuiltins\nbytes\nJ\x00\xca\x9a\x3b\x85R.", "bytes"),
    # numpy.core.multiarray._reconstruct(ndarray, (100000, 100000), b'b'): a 10 GB "empty" array.
    ("reconstruct.pkl", b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\xa0\x86\x01\x00J\xa0\x86\x01"
                        b"\x00\x86C\x01b\x87R.", "_reconstruct of an array of 10000000000 bytes"),
    # numpy.ndarray((100000, 100000)) called directly.
    ("ndarray_call.pkl", b"\x80\x02cnumpy\nndarray\nJ\xa0\x86\x01\x00J\xa0\x86\x01\x00\x86\x85R.", "numpy.ndarray"),
])
def test_small_pickle_cannot_allocate_much(tmp_path, name, data, match):
    path = tmp_path / name
    path.write_bytes(data)
    before = _max_rss_mb()
    with pytest.raises(UnsafePickleError, match=match) as info:
        safe_load(path)
    assert str(path) in str(info.value)
    assert _max_rss_mb() - before < 100  # nothing near the gigabytes asked for was allocated


def test_bytes_from_text_still_loads():
    # Protocol 0-2 pickles spell bytes as bytes() or _codecs.encode(text, 'latin1').
    for obj in (b"", b"\x00\xff abc", [b"x", np.zeros(3, np.float32)]):
        back = safe_loads(pickle.dumps(obj, protocol=2), "b.pkl")
        assert repr(back) == repr(obj)
