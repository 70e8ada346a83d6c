"""A small generated dataset of coloured shapes, for the worked example of docs/own_data.md.

    biam-demo-shapes --out demo/shapes [--num-images 100] [--num-test 30] [--size 96] [--seed 0]

Each image has a grey background (``plain``, ``stripes`` or ``dots``, of a random grey level and
pattern size) and one or two shapes, each in its own quarter of the image, of a random kind
(circle, square, triangle, star, cross) and a colour. Its tags are the colours of the shapes
drawn plus the background's name: the kinds are not tags, because features of a random-weight
backbone (the demo's, needing no download) keep colour but not shape -- a linear probe on them
tells a shape's colour but its kind only at chance. The kinds are recorded in ``shapes.jsonl``.

Five colours are seen (:data:`SEEN_COLOURS`: red, yellow, blue, green, white); the six unseen
ones (:data:`UNSEEN`) are mixtures of two seen ones (:data:`MIXES`): orange (red + yellow),
purple (red + blue), teal (green + blue), pink (red + white), lime (yellow + green) and azure
(blue + white). An unseen colour's RGB is the mean of its parents' RGB, and its word vector the
mean of theirs plus a smaller direction of its own, so the unseen tags can be inferred from the
seen ones in the pictures and in the word space alike. Six unseen tags: more than the dataset
protocol's largest K (5).

The images are split as a zero-shot benchmark is meant to be: the first ``num_images -
num_test`` (``train.txt``) show seen colours only, their first shape cycling through the five;
the last ``num_test`` (``test.txt``) show unseen colours only, their first shape cycling through
the six, so every unseen tag has test images once ``num_test >= 6``. No seen colour is drawn on
a test image, on purpose: through its word vector a mixture's score is about the mean of its
parents' scores, so a pure red shape would rank about as high for ``orange`` as an orange one
(measured: leaving out of the evaluation the test images with a seen second shape, one in five
in an earlier version, raised the ZSL mAP by 14 points on each of two seeds).
The seen tags of the GZSL table that test images carry are then the backgrounds; the seen
colours compete as wrong answers, and their columns, without test positives, count 0 in the
protocol's mAP (as any label without positives does), for the chance rows as for the model.

The word-vector file (GloVe format) holds one vector per word -- each colour and background
word -- plus unrelated filler words (the kind names among them), as a real file would. A seen
colour's vector is a direction shared by the colour words, a fixed random linear image of its
RGB (real word vectors of colour words partly encode how the colours look; this is what lets a
model place the mixtures between their parents) and a random direction of its own; a background
word's is its group's shared direction plus its own.

Written into ``--out``: ``images/shape_00000.png`` ..., ``tags.csv`` (``image,tags``; tags
separated by ``;``), ``shapes.jsonl`` (what was drawn where: colour, kind, centre, radius, RGB --
the ground truth for attention maps), ``seen.txt``, ``unseen.txt``, ``word_vectors.txt`` and
``train.txt`` and ``test.txt`` (the image split, for ``extract_own.py --train-list/--test-list``) and
``shapes_demo.json`` (the settings and the list of files written). Everything follows from the
seed. The command writes into an empty or new folder, or into one it wrote before (replacing
only the files listed in its ``shapes_demo.json``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["SEEN_COLOURS", "UNSEEN_COLOURS", "COLOURS", "KINDS", "BACKGROUNDS", "UNSEEN", "MARKER", "all_tags",
           "draw_image", "generate"]

# The seen colours, and the unseen ones with the two seen colours each one mixes. An unseen
# colour's RGB is the exact mean of its parents' RGB, and its word vector the mean of theirs
# plus a smaller direction of its own (see _word_vectors).
SEEN_COLOURS: Dict[str, tuple] = {"red": (215, 35, 35), "yellow": (235, 205, 25), "blue": (35, 70, 215),
                                  "green": (35, 165, 50), "white": (245, 245, 245)}
MIXES: Dict[str, tuple] = {"orange": ("red", "yellow"), "purple": ("red", "blue"), "teal": ("green", "blue"),
                           "pink": ("red", "white"), "lime": ("yellow", "green"), "azure": ("blue", "white")}
UNSEEN_COLOURS: Dict[str, tuple] = {
    name: tuple((SEEN_COLOURS[a][i] + SEEN_COLOURS[b][i]) / 2 for i in range(3)) for name, (a, b) in MIXES.items()}
COLOURS: Dict[str, tuple] = {**SEEN_COLOURS, **UNSEEN_COLOURS}
# Six unseen tags: more than the protocol's largest K (5), so P/R/F1 at K = 5 still rank.
UNSEEN = tuple(UNSEEN_COLOURS)
KINDS = ("circle", "square", "triangle", "star", "cross")
BACKGROUNDS = ("plain", "stripes", "dots")
MARKER = "shapes_demo.json"
# Star: inner radius / outer radius; cross: half the arm width / outer radius.
STAR_INNER = 0.4
CROSS_HALF_WIDTH = 0.35
# Background greys stay in [BACKGROUND_MIN, BACKGROUND_MAX], darker than any white shape
# (245 - jitter >= 230), so no background pixel passes for a white shape.
BACKGROUND_MIN, BACKGROUND_MAX = 40, 190
JITTER = 15
# A colour word's vector: RGB_WEIGHT scales the part that follows its RGB, SEEN_OWN its own
# random direction; an unseen word's own direction (UNSEEN_OWN) is smaller: real word vectors of
# a mixed colour sit near its parents' but not on their mean.
RGB_WEIGHT = 1.0
SEEN_OWN = 0.5
UNSEEN_OWN = 0.25
FILLER_WORDS = ("the", "of", "and", "photo", "picture", "tree", "house", "river", "music", "city", "water",
                "animal", "dog", "cat", "car", "road", "mountain", "person", "food", "light", "night", "sky") + KINDS


def all_tags() -> List[str]:
    """Every tag, seen ones first: seen colours, backgrounds, then the unseen colours."""
    return list(SEEN_COLOURS) + list(BACKGROUNDS) + list(UNSEEN)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> List[tuple]:
    if kind == "square":
        pts = [(r, 45 + 90 * i) for i in range(4)]
    elif kind == "triangle":
        pts = [(r, -90 + 120 * i) for i in range(3)]
    elif kind == "star":
        pts = [(r if i % 2 == 0 else r * STAR_INNER, -90 + 36 * i) for i in range(10)]
    elif kind == "cross":
        w = CROSS_HALF_WIDTH * r
        corners = [(w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w), (-w, -r)]
        pts = [(math.hypot(x, y), math.degrees(math.atan2(y, x))) for x, y in corners]
    else:
        raise ValueError(f"not a polygon: {kind}")
    return [(cx + d * math.cos(math.radians(a + angle)), cy + d * math.sin(math.radians(a + angle))) for d, a in pts]


def _background(rng: np.random.Generator, size: int, kind: str):
    from PIL import Image, ImageDraw

    base = int(rng.integers(BACKGROUND_MIN, BACKGROUND_MAX + 1))
    delta = int(rng.integers(35, 60))
    # The pattern's grey is lighter unless that would leave the range (then darker: base > 130).
    other = base + delta if base + delta <= BACKGROUND_MAX else base - delta
    img = Image.new("RGB", (size, size), (base, base, base))
    draw = ImageDraw.Draw(img)
    if kind == "stripes":
        period = int(rng.integers(size // 12, size // 6 + 1))
        vertical = bool(rng.integers(2))
        for start in range(0, size, period):
            box = (start, 0, start + period // 2 - 1, size) if vertical else (0, start, size, start + period // 2 - 1)
            draw.rectangle(box, fill=(other, other, other))
    elif kind == "dots":
        step = int(rng.integers(size // 12, size // 7 + 1))
        rad = max(1, step // 5)
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=(other, other, other))
    return img


def draw_image(rng: np.random.Generator, size: int, first: Optional[str] = None,
               colours: Optional[Sequence[str]] = None, max_shapes: int = 2):
    """One image: ``(PIL image, background name, [shape dicts])``.

    One to ``max_shapes`` shapes sit in distinct quarters (so they never overlap), each of a
    random kind; ``first`` forces the colour of the first shape, the others are drawn from
    ``colours`` (default: all of :data:`COLOURS`). A shape dict holds colour, kind, centre
    (x, y) and radius in pixels, and the rgb drawn (the colour's RGB, each channel moved by up
    to :data:`JITTER`).
    """
    from PIL import ImageDraw

    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    img = _background(rng, size, background)
    draw = ImageDraw.Draw(img)
    cell = size / 2
    colours = list(colours) if colours is not None else list(COLOURS)
    count = int(rng.integers(1, max_shapes + 1))
    shapes = []
    for n, q in enumerate(rng.permutation(4)[:count]):
        colour = first if (n == 0 and first) else colours[int(rng.integers(len(colours)))]
        kind = KINDS[int(rng.integers(len(KINDS)))]
        # Large shapes: each covers several of the 14 x 14 feature regions the model attends over.
        r = float(rng.uniform(0.36, 0.46)) * cell
        cx = (q % 2) * cell + cell / 2 + float(rng.uniform(-1, 1)) * (cell / 2 - r)
        cy = (q // 2) * cell + cell / 2 + float(rng.uniform(-1, 1)) * (cell / 2 - r)
        rgb = tuple(int(np.clip(round(v) + rng.integers(-JITTER, JITTER + 1), 0, 255)) for v in COLOURS[colour])
        if kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
        else:
            draw.polygon(_polygon(kind, cx, cy, r, float(rng.uniform(-20, 20))), fill=rgb)
        shapes.append({"colour": colour, "kind": kind, "centre": [round(cx, 2), round(cy, 2)], "radius": round(r, 2),
                       "rgb": list(rgb)})
    return img, background, shapes


def _word_vectors(rng: np.random.Generator, dim: int) -> Dict[str, np.ndarray]:
    """GloVe-like vectors. A seen colour word is a direction shared by the colour words, a fixed
    random linear image of its RGB (real word vectors of colour words partly encode how the
    colours look) and a random direction of its own; an unseen colour is the mean of its two
    parents' vectors plus :data:`UNSEEN_OWN` times a direction of its own. Background words are
    their group's shared direction plus their own; filler words are unrelated."""
    out = {}
    shared = rng.normal(size=dim)
    look = rng.normal(size=(dim, 3)) * RGB_WEIGHT
    for w, rgb in SEEN_COLOURS.items():
        out[w] = 0.5 * shared + look @ (np.asarray(rgb) / 127.5 - 1) + SEEN_OWN * rng.normal(size=dim)
    for w, (a, b) in MIXES.items():
        out[w] = (out[a] + out[b]) / 2 + UNSEEN_OWN * rng.normal(size=dim)
    shared = rng.normal(size=dim)
    for w in BACKGROUNDS:
        out[w] = 0.5 * shared + rng.normal(size=dim)
    for w in FILLER_WORDS:
        out[w] = rng.normal(size=dim)
    # Scaled to GloVe-like magnitudes; the file then looks like one.
    return {w: (v / np.sqrt(dim) * 5).astype(np.float32) for w, v in out.items()}


def _prepare_out(out: Path) -> None:
    """Refuse a folder holding files this command did not write; drop the files of a previous run."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    marker = out / MARKER
    if not marker.is_file():
        if any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty and was not written by this command (no {MARKER}); "
                                  "choose a new or empty folder")
        return
    try:
        previous = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise FileExistsError(f"{marker}: unreadable ({err}); remove the folder yourself or choose another") from None
    for rel in previous:
        if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
            raise FileExistsError(f"{marker}: lists {rel!r}, not a file of this folder; remove the folder yourself")
        path = out / rel
        if path.is_file():
            path.unlink()
    marker.unlink()


def generate(out: os.PathLike, *, num_images: int = 100, num_test: Optional[int] = None, size: int = 96, seed: int = 0,
             image_format: str = "png", dim: int = 300) -> dict:
    """Write the demo dataset into ``out`` (see the module docstring). ``num_test`` images
    (default ``round(0.3 * num_images)``, at least 1) form the test split. Returns the settings
    and the relative paths written (what ``shapes_demo.json`` holds)."""
    if num_test is None:
        num_test = max(1, round(0.3 * num_images))
    if num_images < 2 or not 1 <= num_test < num_images or size < 32 or dim < 1:
        raise ValueError(f"need num_images >= 2, 1 <= num_test < num_images, size >= 32, dim >= 1; "
                         f"got {num_images}, {num_test}, {size}, {dim}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    out = Path(out)
    _prepare_out(out)
    (out / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    seen_colours, unseen_colours = list(SEEN_COLOURS), list(UNSEEN)
    num_train = num_images - num_test
    files, csv_rows, drawn, split_rows = [], ["image,tags\n"], [], {"train": [], "test": []}
    for i in range(num_images):
        # Train images show seen colours only, the first shape cycling through them; test images
        # unseen colours only, the first shape cycling through them (see the module docstring).
        if i < num_train:
            img, background, shapes = draw_image(rng, size, first=seen_colours[i % len(seen_colours)],
                                                 colours=seen_colours)
        else:
            img, background, shapes = draw_image(rng, size, first=unseen_colours[(i - num_train) % len(unseen_colours)],
                                                 colours=unseen_colours)
        rel = f"shape_{i:05d}.{image_format}"
        split_rows["train" if i < num_train else "test"].append(rel + "\n")
        if image_format == "jpg":
            img.save(out / "images" / rel, quality=95)
        else:
            img.save(out / "images" / rel)
        files.append(f"images/{rel}")
        tags = list(dict.fromkeys(s["colour"] for s in shapes)) + [background]
        csv_rows.append(f"{rel},{';'.join(tags)}\n")
        drawn.append(json.dumps({"image": rel, "background": background, "shapes": shapes}) + "\n")
    tags = all_tags()
    seen = [t for t in tags if t not in UNSEEN]
    vectors = _word_vectors(rng, dim)
    texts = {
        "tags.csv": "".join(csv_rows),
        "shapes.jsonl": "".join(drawn),
        "seen.txt": "".join(t + "\n" for t in seen),
        "unseen.txt": "".join(t + "\n" for t in UNSEEN),
        "word_vectors.txt": "".join(w + " " + " ".join(f"{x:.6f}" for x in v) + "\n" for w, v in vectors.items()),
        "train.txt": "".join(split_rows["train"]),
        "test.txt": "".join(split_rows["test"]),
    }
    for name, text in texts.items():
        (out / name).write_text(text, encoding="utf-8")
        files.append(name)
    info = {"num_images": num_images, "num_test": num_test, "size": size, "seed": seed, "image_format": image_format, "dim": dim,
            "seen": seen, "unseen": list(UNSEEN), "files": files}
    (out / MARKER).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info
