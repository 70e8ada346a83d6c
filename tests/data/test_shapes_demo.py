"""The shapes demo generator: files consistent with each other, tags matching the pixels drawn,
word vectors that relate unseen tags to seen ones, determinism, and no foreign file touched."""

from __future__ import annotations

import json
import numpy as np
import pytest
from PIL import Image

from biam.cli.demo_shapes import main as shapes_main
from biam.demo import shapes as shapes_demo
from biam.datasets.own.annotations import build_own_dataset
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
    assert unseen == list(shapes_demo.UNSEEN) and len(unseen) == 6 and len(seen) == 8 and not set(seen) & set(unseen)
    for row, d in zip(rows[1:], drawn):
        image, tags = row.split(",")
        assert image == d["image"]
        expect = {s["colour"] for s in d["shapes"]} | {d["background"]}
        assert set(tags.split(";")) == expect and expect <= set(seen) | set(unseen)
        assert all(s["kind"] in shapes_demo.KINDS for s in d["shapes"])
    # 18 train images cycle through the 5 seen colours, 10 test images through the 6 unseen ones:
    # every tag occurs, the train images show no unseen colour and the test images no seen one.
    used = {t for row in rows[1:] for t in row.split(",")[1].split(";")}
    assert used == set(seen) | set(unseen)
    train = (out / "train.txt").read_text().split()
    test = (out / "test.txt").read_text().split()
    assert train + test == [row.split(",")[0] for row in rows[1:]] and len(test) == 10
    tags = {row.split(",")[0]: set(row.split(",")[1].split(";")) for row in rows[1:]}
    assert not any(tags[image] & set(unseen) for image in train)
    assert all(tags[image] & set(unseen) for image in test)
    assert not any(tags[image] & set(shapes_demo.SEEN_COLOURS) for image in test)
    assert [d["shapes"][0]["colour"] for d in drawn[18:]] == (list(shapes_demo.UNSEEN) * 2)[:10]


def test_unseen_colours_are_the_means_of_their_parents(demo):
    out, _ = demo
    for name, (a, b) in shapes_demo.MIXES.items():
        assert name in shapes_demo.UNSEEN and a in shapes_demo.SEEN_COLOURS and b in shapes_demo.SEEN_COLOURS
        mean = (np.array(shapes_demo.SEEN_COLOURS[a]) + np.array(shapes_demo.SEEN_COLOURS[b])) / 2
        np.testing.assert_allclose(shapes_demo.COLOURS[name], mean)
    # Drawn pixels: the colour's RGB within the jitter (rounded), background greys darker than any white.
    for line in (out / "shapes.jsonl").read_text().splitlines():
        for s in json.loads(line)["shapes"]:
            assert np.abs(np.array(s["rgb"]) - np.array(shapes_demo.COLOURS[s["colour"]])).max() <= shapes_demo.JITTER + 0.5
    assert shapes_demo.BACKGROUND_MAX < min(shapes_demo.SEEN_COLOURS["white"]) - shapes_demo.JITTER


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
        # Backgrounds are grey (as white shapes, which are lighter than any background grey).
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


def test_unseen_word_vectors_sit_by_their_parents(demo):
    out, _ = demo
    seen = (out / "seen.txt").read_text().split()
    unseen = (out / "unseen.txt").read_text().split()
    emb = label_embeddings(seen + unseen, out / "word_vectors.txt", progress=False)
    assert emb.shape == (14, 64)
    words = {}
    for line in (out / "word_vectors.txt").read_text().splitlines():
        word, *values = line.split()
        words[word] = np.array(values, dtype=float)
    for u in unseen:
        a, b = shapes_demo.MIXES[u]
        # The mean of the parents' vectors plus a smaller own part: closer to that mean than to
        # either parent, and each parent closer to it than any seen word other than the parents.
        mean = (words[a] + words[b]) / 2
        own = np.linalg.norm(words[u] - mean)
        assert own < np.linalg.norm(words[u] - words[a]) and own < np.linalg.norm(words[u] - words[b])
        # Its nearest seen word is a parent and the other parent is in the top 3 (a third colour
        # that looks like a parent -- yellow and white are both light -- may come between).
        cos = {t: words[u] @ words[t] / np.linalg.norm(words[u]) / np.linalg.norm(words[t]) for t in seen}
        nearest = sorted(seen, key=lambda t: -cos[t])[:3]
        assert nearest[0] in (a, b) and {a, b} <= set(nearest), (u, cos)


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
    assert shapes_main(["--out", str(foreign), "--num-images", "2"]) == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]

    out = tmp_path / "demo"
    assert shapes_main(["--out", str(out), "--num-images", "5", "--dim", "4"]) == 0
    (out / "notes.txt").write_text("mine")  # a user file added later survives a rerun
    assert shapes_main(["--out", str(out), "--num-images", "3", "--dim", "4"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"shape_0000{i}.png" for i in range(3)]
    assert len((out / "tags.csv").read_text().splitlines()) == 4
