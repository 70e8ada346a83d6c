"""The shapes demo generator: files consistent with each other, tags matching the pixels drawn,
word vectors that relate unseen tags to seen ones, determinism, and no foreign file touched."""

from __future__ import annotations

import json
import numpy as np
import pytest
from PIL import Image

from biam.data import shapes_demo
from biam.data.own_data import build_own_dataset
from biam.data.wordvec import label_embeddings

def kind_of(img: np.ndarray, shape: dict) -> str:
    """Tell the kind from the pixels of the shape's colour around its centre: a star and a cross
    have a long border for their area (the star the smaller area); otherwise area / radius^2 is
    about pi (circle), 2 (square) or 1.3 (triangle). Thresholds measured on 400 shapes sit
    between the kinds' ranges (border / sqrt(area): star, cross >= 4.6, others <= 4.1)."""
    cx, cy = shape["centre"]
    r = shape["radius"]
    box = img[max(0, int(cy - r) - 2): int(cy + r) + 3, max(0, int(cx - r) - 2): int(cx + r) + 3]
    mask = (box == np.array(shape["rgb"])).all(axis=-1)
    area = mask.sum()
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    ratio = area / (r * r)
    if (mask & ~inner).sum() / np.sqrt(area) > 4.3:
        return "star" if ratio < 1.9 else "cross"
    return "circle" if ratio > 2.7 else "square" if ratio > 1.75 else "triangle"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "shapes"
    info = shapes_demo.generate(out, num_images=28, num_test=10, size=96, seed=5, dim=64)
    return out, info


def test_files_and_tags_are_consistent(demo):
    out, info = demo
    for rel in info["files"]:
        assert (out / rel).is_file()
    rows = (out / "tags.csv").read_text().splitlines()
    drawn = [json.loads(x) for x in (out / "shapes.jsonl").read_text().splitlines()]
    assert rows[0] == "image,tags" and len(rows) == 29 and len(drawn) == 28
    seen = (out / "seen.txt").read_text().split()
    unseen = (out / "unseen.txt").read_text().split()
    assert unseen == list(shapes_demo.UNSEEN) and len(seen) == 18 and not set(seen) & set(unseen)
    for row, d in zip(rows[1:], drawn):
        image, tags = row.split(",")
        assert image == d["image"]
        expect = {f"{s['colour']}_{s['kind']}" for s in d["shapes"]} | {d["background"]}
        assert set(tags.split(";")) == expect and expect <= set(seen) | set(unseen)
    # 18 train images cycle through the 15 seen pairs, 10 test images through the 10 unseen ones:
    # every tag occurs, and the train images show no unseen pair.
    used = {t for row in rows[1:] for t in row.split(",")[1].split(";")}
    assert used == set(seen) | set(unseen)
    train = (out / "train.txt").read_text().split()
    test = (out / "test.txt").read_text().split()
    assert train + test == [row.split(",")[0] for row in rows[1:]] and len(test) == 10
    tags = {row.split(",")[0]: set(row.split(",")[1].split(";")) for row in rows[1:]}
    assert not any(tags[image] & set(unseen) for image in train)
    assert all(tags[image] & set(unseen) for image in test)


def test_pixels_show_the_tagged_shapes(demo):
    out, _ = demo
    for line in (out / "shapes.jsonl").read_text().splitlines():
        d = json.loads(line)
        img = np.asarray(Image.open(out / "images" / d["image"]).convert("RGB")).astype(int)
        assert img.shape == (96, 96, 3)
        for s in d["shapes"]:
            cx, cy = s["centre"]
            assert list(img[int(cy), int(cx)]) == s["rgb"]
            assert kind_of(img, s) == s["kind"], (d["image"], s)
        # Backgrounds are grey, shapes saturated: no background pixel looks like a shape colour.
        grey = (img.max(axis=-1) - img.min(axis=-1)) < 10
        assert grey.mean() > 0.3


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    out, _ = demo
    again = tmp_path / "again"
    shapes_demo.generate(again, num_images=28, num_test=10, size=96, seed=5, dim=64)
    for name in ("tags.csv", "word_vectors.txt", "images/shape_00007.png"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    other = tmp_path / "other"
    shapes_demo.generate(other, num_images=28, size=96, seed=6, dim=16)
    assert (other / "tags.csv").read_bytes() != (out / "tags.csv").read_bytes()


def test_unseen_tags_are_closer_to_seen_tags_sharing_a_word(demo):
    out, _ = demo
    seen = (out / "seen.txt").read_text().split()
    unseen = (out / "unseen.txt").read_text().split()
    emb = label_embeddings(seen + unseen, out / "word_vectors.txt", progress=False)
    assert emb.shape == (28, 64)
    sim = emb[len(seen):] @ emb[: len(seen)].T
    for u, row in zip(unseen, sim):
        colour, kind = u.split("_")
        share = [j for j, t in enumerate(seen) if colour in t.split("_") or kind in t.split("_")]
        other = [j for j in range(len(seen)) if j not in share]
        assert row[share].min() > row[other].max(), u


def test_the_outputs_feed_own_data(demo):
    out, _ = demo
    data = build_own_dataset(out / "tags.csv", out / "images", seen_file=out / "seen.txt",
                             unseen_file=out / "unseen.txt", test_fraction=0.25, seed=0)
    assert data.unseen == list(shapes_demo.UNSEEN)
    assert len(data.splits["train"].images) == 21 and len(data.splits["test"].images) == 7


def test_the_image_lists_feed_own_data(demo):
    out, _ = demo
    data = build_own_dataset(out / "tags.csv", out / "images", seen_file=out / "seen.txt",
                             unseen_file=out / "unseen.txt", train_list=out / "train.txt", test_list=out / "test.txt")
    test = data.splits["test"].labels[:, len(data.seen):]
    # Every unseen tag is on a test image: no unseen label without positives in the ZSL table.
    assert ((test == 1).sum(axis=0) >= 1).all() and len(data.splits["train"].images) == 18


def test_bad_sizes_are_refused(tmp_path):
    for kwargs in ({"num_images": 5, "num_test": 5}, {"num_images": 5, "num_test": 0}, {"num_images": 1}):
        with pytest.raises(ValueError, match="num_test"):
            shapes_demo.generate(tmp_path / "x", **kwargs)


def test_refuses_a_foreign_folder_and_replaces_only_its_own_files(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    assert shapes_demo.main(["--out", str(foreign), "--num-images", "2"]) == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]

    out = tmp_path / "demo"
    assert shapes_demo.main(["--out", str(out), "--num-images", "5", "--dim", "4"]) == 0
    (out / "notes.txt").write_text("mine")  # a user file added later survives a rerun
    assert shapes_demo.main(["--out", str(out), "--num-images", "3", "--dim", "4"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"shape_0000{i}.png" for i in range(3)]
    assert len((out / "tags.csv").read_text().splitlines()) == 4
