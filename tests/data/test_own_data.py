"""Own datasets from a folder + CSV/JSON lines: label matrices in the seen-then-unseen layout,
given and seeded splits (reproducible, independent of record order), and an error naming the
file and line for every kind of bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from biam.datasets.own.annotations import (OwnDataError, build_own_dataset, choose_test, choose_unseen, hash_order,
                                read_annotations)

ROWS = [  # image, tags, split
    ("a/1.jpg", ["dog", "grass"], "train"),
    ("a/2.jpg", ["cat"], "train"),
    ("b/3.jpg", ["dog", "sofa"], "test"),
    ("b/4.jpg", [], "test"),
    ("5.jpg", ["cat", "grass", "sofa"], "train"),
    ("6.jpg", ["grass"], "test"),
]


def make_images(root: Path, rows=ROWS) -> Path:
    for image, _, _ in rows:
        path = root / image
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded here")  # only existence is checked at this stage
    return root


def write_csv(path: Path, rows=ROWS, split=True) -> Path:
    head = "image,tags" + (",split" if split else "")
    body = "".join(f"{img},{';'.join(tags)}" + (f",{s}" if split else "") + "\n" for img, tags, s in rows)
    path.write_text(head + "\n" + body, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows=ROWS, split=True) -> Path:
    path.write_text("".join(json.dumps({"image": i, "tags": t, **({"split": s} if split else {})}) + "\n"
                            for i, t, s in rows), encoding="utf-8")
    return path


def labels_file(path: Path, labels) -> Path:
    path.write_text("".join(f"{x}\n" for x in labels), encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path):
    return make_images(tmp_path / "images")


@pytest.mark.parametrize("writer", [write_csv, write_jsonl])
def test_given_splits_give_the_nus_wide_layout(tmp_path, folder, writer):
    ann = writer(tmp_path / ("tags.csv" if writer is write_csv else "tags.jsonl"))
    data = build_own_dataset(ann, folder, seen_file=labels_file(tmp_path / "seen.txt", ["grass", "dog"]),
                             unseen_file=labels_file(tmp_path / "unseen.txt", ["sofa", "cat"]))
    assert data.seen == ["grass", "dog"] and data.unseen == ["sofa", "cat"]  # file order
    train, test = data.splits["train"], data.splits["test"]
    assert train.images == ["a/1.jpg", "a/2.jpg", "5.jpg"] and test.images == ["b/3.jpg", "b/4.jpg", "6.jpg"]
    assert train.labels.dtype == np.int8
    np.testing.assert_array_equal(train.labels, [[1, 1, -1, -1], [-1, -1, -1, 1], [1, -1, 1, 1]])
    np.testing.assert_array_equal(test.labels, [[-1, 1, 1, -1], [-1, -1, -1, -1], [1, -1, -1, -1]])
    assert train.rows[0] == f"{ann}:{2 if writer is write_csv else 1}"
    # The image with no tag is kept; a train image without a seen tag ("a/2.jpg": cat) is noted.
    assert any("1 train image(s) have no seen tag" in n for n in data.notes)

    spec = data.split_spec("test", dataset="mine")
    spec.check()
    assert spec.paths == [str(folder / p) for p in test.images]
    assert spec.names == ["b_3.jpg", "b_4.jpg", "6.jpg"] and spec.dataset == "mine"
    assert list(spec.seen) == data.seen and list(spec.unseen) == data.unseen
    assert spec.extra["source"]["labels"]["rule"] == "files" and spec.extra["source"]["split"]["rule"] == "field"


def test_one_label_file_makes_the_rest_the_other_side(tmp_path, folder):
    data = build_own_dataset(write_csv(tmp_path / "t.csv"), folder, unseen_file=labels_file(tmp_path / "u.txt", ["sofa"]))
    assert data.seen == ["cat", "dog", "grass"] and data.unseen == ["sofa"]
    data = build_own_dataset(write_csv(tmp_path / "t.csv"), folder, seen_file=labels_file(tmp_path / "s.txt", ["dog"]))
    assert data.seen == ["dog"] and data.unseen == ["cat", "grass", "sofa"]


def test_seeded_rules_are_reproducible_and_independent_of_record_order(tmp_path, folder):
    def build(rows, name, seed):
        return build_own_dataset(write_csv(tmp_path / name, rows, split=False), folder, unseen_fraction=0.5,
                                 test_fraction=0.5, seed=seed)

    a, b = build(ROWS, "a.csv", 3), build(ROWS[::-1], "b.csv", 3)
    assert a.seen == b.seen and a.unseen == b.unseen and len(a.unseen) == 2
    assert set(a.splits["test"].images) == set(b.splits["test"].images) and len(a.splits["test"].images) == 3
    # Within a split, records keep file order.
    assert b.splits["train"].images == [i for i, _, _ in ROWS[::-1] if i in set(a.splits["train"].images)]
    seeds = {tuple(build(ROWS, f"s{s}.csv", s).splits["test"].images) for s in range(6)}
    assert len(seeds) > 1  # the seed matters
    assert a.source["split"] == {"rule": "fraction", "fraction": 0.5, "seed": 3}


def test_rules_pin_their_values():
    # sha256-based: these exact results hold on every machine and version.
    assert hash_order(["a", "b", "c", "d"], 0, "test") == hash_order(["d", "c", "b", "a"], 0, "test")
    counts = {"dog": 5, "cat": 1, "sofa": 1, "grass": 9, "sky": 3}
    assert choose_unseen(counts, 0.4, "rarest", 0) == ["cat", "sofa"]
    random_pick = choose_unseen(counts, 0.4, "random", 0)
    assert len(random_pick) == 2 and random_pick == choose_unseen(dict(reversed(counts.items())), 0.4, "random", 0)
    assert len(choose_test([f"{i}.jpg" for i in range(10)], 0.25, 1)) == 2  # round(2.5) = 2
    assert len(choose_test(["x", "y"], 0.01, 1)) == 1  # at least one of each
    with pytest.raises(OwnDataError, match="fraction must be in"):
        choose_test(["x", "y"], 1.0, 0)


def test_adding_an_image_does_not_move_the_others():
    images = [f"{i}.jpg" for i in range(40)]
    order = hash_order(images, 7, "test")
    order_more = hash_order(images + ["new.jpg"], 7, "test")
    assert [x for x in order_more if x != "new.jpg"] == order


def test_train_and_test_lists(tmp_path, folder):
    ann = write_csv(tmp_path / "t.csv", split=False)
    train = labels_file(tmp_path / "train.txt", ["a/1.jpg", "a\\2.jpg", "./5.jpg"])
    test = labels_file(tmp_path / "test.txt", ["b/3.jpg", "b/4.jpg", "6.jpg"])
    data = build_own_dataset(ann, folder, unseen_file=labels_file(tmp_path / "u.txt", ["sofa"]),
                             train_list=train, test_list=test)
    assert data.splits["train"].images == ["a/1.jpg", "a/2.jpg", "5.jpg"]
    labels_file(tmp_path / "test.txt", ["b/3.jpg", "b/4.jpg"])
    with pytest.raises(OwnDataError, match=re.escape(f"in neither {train} nor {test}: {ann}:7: '6.jpg'")):
        build_own_dataset(ann, folder, unseen_fraction=0.5, train_list=train, test_list=test)
    labels_file(tmp_path / "test.txt", ["b/3.jpg", "b/4.jpg", "6.jpg", "5.jpg"])
    with pytest.raises(OwnDataError, match=re.escape(f"{test}:4: image '5.jpg' is in both")):
        build_own_dataset(ann, folder, unseen_fraction=0.5, train_list=train, test_list=test)
    labels_file(tmp_path / "test.txt", ["b/3.jpg", "b/4.jpg", "6.jpg", "7.jpg"])
    with pytest.raises(OwnDataError, match=re.escape(f"{test}:4: image '7.jpg' is not in the annotation file")):
        build_own_dataset(ann, folder, unseen_fraction=0.5, train_list=train, test_list=test)


def test_missing_images_are_one_error_naming_each_row(tmp_path, folder):
    (folder / "b" / "3.jpg").unlink()
    (folder / "6.jpg").unlink()
    ann = write_csv(tmp_path / "t.csv")
    with pytest.raises(OwnDataError) as err:
        build_own_dataset(ann, folder, unseen_fraction=0.5)
    msg = str(err.value)
    assert f"2 image file(s) listed in {ann} are not in {folder}" in msg
    assert f"{ann}:4: 'b/3.jpg'" in msg and f"{ann}:7: '6.jpg'" in msg


def test_tags_in_neither_list_name_every_row(tmp_path, folder):
    ann = write_csv(tmp_path / "t.csv")
    seen, unseen = labels_file(tmp_path / "s.txt", ["dog", "grass"]), labels_file(tmp_path / "u.txt", ["cat"])
    with pytest.raises(OwnDataError) as err:
        build_own_dataset(ann, folder, seen_file=seen, unseen_file=unseen)
    msg = str(err.value)
    assert f"2 tag(s) are in neither {seen} nor {unseen}" in msg
    assert f"{ann}:4: image 'b/3.jpg': tag 'sofa'" in msg and f"{ann}:6: image '5.jpg': tag 'sofa'" in msg
    labels_file(tmp_path / "u.txt", ["cat", "sofa", "dog"])
    with pytest.raises(OwnDataError, match=r"label\(s\) in both files: 'dog'"):
        build_own_dataset(ann, folder, seen_file=seen, unseen_file=unseen)


@pytest.mark.parametrize("text, where, expect", [
    ("image,tags\na/1.jpg,dog\na/1.jpg,cat\n", 3, r"image 'a/1\.jpg' is listed twice \(first at .*t\.csv:2\)"),
    ("image,tags\na/1.jpg,dog,extra\n", 2, "3 fields, the header has 2"),
    ("a/1.jpg,dog\n", 1, "has no column 'image'"),
    ("image,tags,split\na/1.jpg,dog,train\na/2.jpg,cat,val\n", 3, "field 'split' is 'val'"),
    ("image,tags\n/etc/passwd,dog\n", 2, "must be a path relative to the image folder"),
    ("image,tags\n../up.jpg,dog\n", 2, "must be a path relative"),
    ("image,tags\n,dog\n", 2, "field 'image' is empty"),
    ('image,tags\n"a/1.jpg,dog\nb.jpg,cat\n', 2, r"1 fields, .*an unclosed quote\?"),
    ('image,tags\nb.jpg,cat\n"x\ny.jpg",dog\nc.jpg,,\n', 5, "3 fields"),
])
def test_bad_csv_rows_name_file_and_line(tmp_path, text, where, expect):
    path = tmp_path / "t.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(OwnDataError, match=expect) as err:
        read_annotations(path)
    assert str(err.value).startswith(f"{path}:{where}:")


def test_non_utf8_csv_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"image,tags\na.jpg,dog\nb.jpg,caf\xe9\n")
    with pytest.raises(OwnDataError, match=re.escape(f"{path}:3: not UTF-8")):
        read_annotations(path)


@pytest.mark.parametrize("line, expect", [
    ('{"image": "a.jpg", "tags": "dog"}', "field 'tags' must be a list of strings"),
    ('{"image": "a.jpg"}', "field 'tags' is missing"),
    ('["a.jpg", ["dog"]]', "expected an object"),
    ('{"image": "a.jpg", "tags": [}', "not valid JSON"),
])
def test_bad_jsonl_lines_name_file_and_line(tmp_path, line, expect):
    path = tmp_path / "t.jsonl"
    path.write_text('{"image": "ok.jpg", "tags": ["cat"]}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(OwnDataError, match=expect) as err:
        read_annotations(path)
    assert str(err.value).startswith(f"{path}:3:")


def test_split_field_for_all_records_or_none(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"image": "a.jpg", "tags": [], "split": "train"}\n{"image": "b.jpg", "tags": []}\n')
    with pytest.raises(OwnDataError, match=re.escape(f"{path}:2: image 'b.jpg': field 'split' is missing")):
        read_annotations(path)


def test_tags_are_stripped_deduplicated_and_empty_pieces_dropped(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeffImage, Tags ,caption\n\"x, y.jpg\", dog ;;cat;dog;,hello\n\nz.jpg,,\n", encoding="utf-8")
    recs = read_annotations(path)
    assert [(r.image, r.tags) for r in recs] == [("x, y.jpg", ("dog", "cat")), ("z.jpg", ())]
    assert recs[1].where == f"{path}:4"


def test_split_and_label_conflicts_and_absences_are_errors(tmp_path, folder):
    ann = write_csv(tmp_path / "t.csv")
    with pytest.raises(OwnDataError, match="given more than once"):
        build_own_dataset(ann, folder, unseen_fraction=0.5, test_fraction=0.2)
    with pytest.raises(OwnDataError, match="no seen/unseen split"):
        build_own_dataset(ann, folder)
    with pytest.raises(OwnDataError, match="label files or an unseen fraction, not both"):
        build_own_dataset(ann, folder, unseen_fraction=0.5, unseen_file=labels_file(tmp_path / "u.txt", ["cat"]))
    with pytest.raises(OwnDataError, match="no train/test split"):
        build_own_dataset(write_csv(tmp_path / "n.csv", split=False), folder, unseen_fraction=0.5)
    with pytest.raises(OwnDataError, match="unknown annotation format"):
        build_own_dataset(tmp_path / "t.tsv", folder, unseen_fraction=0.5)
    with pytest.raises(OwnDataError, match="leaves 4 seen and 0 unseen"):
        build_own_dataset(ann, folder, seen_file=labels_file(tmp_path / "s.txt", ["cat", "dog", "grass", "sofa"]))
    dup = labels_file(tmp_path / "d.txt", ["cat", "dog", "cat"])
    with pytest.raises(OwnDataError, match=re.escape(f"{dup}:3: 'cat' is listed twice")):
        build_own_dataset(ann, folder, unseen_file=dup)


def test_stored_name_collision_names_both_rows(tmp_path, folder):
    rows = [("a/1.jpg", ["dog"], "train"), ("a_1.jpg", ["cat"], "test")]
    make_images(folder, rows)
    ann = write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(OwnDataError, match=re.escape(f"{ann}:3: image 'a_1.jpg' and {ann}:2: image 'a/1.jpg'")):
        build_own_dataset(ann, folder, unseen_fraction=0.5)


def test_labels_without_positives_are_noted(tmp_path, folder):
    data = build_own_dataset(write_csv(tmp_path / "t.csv"), folder,
                             seen_file=labels_file(tmp_path / "s.txt", ["dog", "grass", "cat", "horse"]),
                             unseen_file=labels_file(tmp_path / "u.txt", ["sofa", "zebra"]))
    assert data.splits["train"].labels.shape == (3, 6)
    assert (data.splits["train"].labels[:, 3] == -1).all()
    assert "1 seen label(s) have no train image: 'horse'" in data.notes
    assert "1 unseen label(s) have no test image: 'zebra'" in data.notes
    assert "2 seen labels" not in data.summary() and "4 seen labels, 2 unseen labels" in data.summary()


@pytest.mark.parametrize("tag,code", [("dog\u2028cat", "U+2028"), ("dog\x07", "U+0007"), ("a\u2029b", "U+2029")])
@pytest.mark.parametrize("writer", [write_csv, write_jsonl])
def test_tag_with_a_line_separator_or_control_character_names_the_line(tmp_path, folder, tag, code, writer):
    rows = [ROWS[0], ("a/2.jpg", ["cat", tag], "train")]
    path = writer(tmp_path / ("t.csv" if writer is write_csv else "t.jsonl"), rows)
    with pytest.raises(OwnDataError, match=re.escape(code)) as err:
        read_annotations(path)
    assert str(err.value).startswith(f"{path}:{3 if writer is write_csv else 2}:")


def test_a_unicode_line_separator_does_not_split_a_label_silently(tmp_path):
    from biam.datasets.own.annotations import read_label_file

    path = tmp_path / "seen.txt"
    path.write_text("dog\ncat\u2028bird\n", encoding="utf-8")
    with pytest.raises(OwnDataError, match=r"seen\.txt: line 2 holds U\+2028"):
        read_label_file(path)
    path.write_text("dog\r\ncat\n\n", encoding="utf-8", newline="")
    assert read_label_file(path) == ["dog", "cat"]
