"""Tests of datasets/OpenImages/download_imgs.py against a real HTTP server on 127.0.0.1.

The server (http.server in a thread, ephemeral port) serves generated images and misbehaves on
purpose: 404, wrong bytes for the listed MD5, non-image bytes, a body cut short, a handler that
sleeps past the client timeout, 503/429 the first time then the image, headers or a body
trickled a byte every 0.5 s, redirects to ftp:// and file:// and in an endless chain. It counts
requests per path so retries and resumption can be checked. Every slow handler stops by itself
after a bounded number of bytes. One test runs the same server over TLS with a self-signed
certificate.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import os
import stat
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "datasets" / "OpenImages" / "download_imgs.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("openimages_download_imgs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while the class bodies run.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dl = _load_module()

TIMEOUT = 0.4  # client timeout used by the tests, seconds
SLOW_SLEEP = 1.5  # the slow handler waits this long before answering


def _image_bytes(size, fmt="JPEG", mode="RGB", seed=0) -> bytes:
    img = Image.effect_noise(size, 40 + seed).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _b64md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class _Server:
    """A threaded HTTP server with scripted routes; counts requests per path."""

    def __init__(self, tls_context=None):
        self.routes = {}  # path -> callable(handler, n_th_request) -> None
        self.counts = {}
        self.errors = []  # exceptions raised in handlers (e.g. client hung up on a slow one)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with outer.lock:
                    n = outer.counts.get(self.path, 0)
                    outer.counts[self.path] = n + 1
                route = outer.routes.get(self.path)
                if route is None:
                    self.send_error(404, "no such image")
                    return
                route(self, n)

            def log_message(self, format, *args):
                pass  # keep pytest output readable; the counts are what the tests check

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                outer.errors.append(sys.exc_info()[1])

        self.httpd = Server(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls_context is not None:
            self.httpd.socket = tls_context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _send(handler, body: bytes, status=200, ctype="image/jpeg", headers=()):
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    for k, v in headers:
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(body)


def ok(body):
    return lambda h, n: _send(h, body)


def fail_first(status, body, headers=()):
    def route(h, n):
        if n == 0:
            _send(h, b"busy", status=status, ctype="text/plain", headers=headers)
        else:
            _send(h, body)
    return route


def slow(body):
    def route(h, n):
        time.sleep(SLOW_SLEEP)
        _send(h, body)
    return route


def cut_short(body):
    def route(h, n):
        # Promise the whole body, send half, hang up: the client sees an incomplete read.
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        h.close_connection = True
    return route


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _write_csv(path: Path, rows, bom=False, columns=("ImageID", "Subset", "OriginalURL", "OriginalMD5", "Thumbnail300KURL")):
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for row in rows:
            w.writerow(row)


def _read_report(path: Path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _run(args, capsys):
    code = dl.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


GOOD_LAND = _image_bytes((640, 480), seed=1)
GOOD_PORT = _image_bytes((300, 700), fmt="PNG", seed=2)
RETRY_IMG = _image_bytes((512, 400), seed=3)
SLOW_IMG = _image_bytes((320, 320), seed=4)


@pytest.fixture
def scenario(server, tmp_path):
    """Routes and CSV for a mixed run: two good, corrupt, not-an-image, 404, slow, 503, 429, cut."""
    wrong = _image_bytes((400, 300), seed=9)
    server.routes.update({
        "/good1.jpg": ok(GOOD_LAND),
        "/good2.png": ok(GOOD_PORT),
        "/corrupt.jpg": ok(wrong),
        "/text.jpg": ok(b"<html>not an image</html>"),
        "/slow.jpg": slow(SLOW_IMG),
        "/flaky.jpg": fail_first(503, RETRY_IMG),
        "/limited.jpg": fail_first(429, RETRY_IMG, headers=[("Retry-After", "0")]),
        "/cut.jpg": cut_short(GOOD_LAND),
    })
    rows = [
        ("000000000000good", "train", server.url("/good1.jpg"), _b64md5(GOOD_LAND), ""),
        ("00000000000good2", "train", server.url("/good2.png"), _b64md5(GOOD_PORT), ""),
        ("00000000corrupt0", "train", server.url("/corrupt.jpg"), _b64md5(GOOD_LAND), ""),
        ("0000000000notimg", "train", server.url("/text.jpg"), _b64md5(b"<html>not an image</html>"), ""),
        ("0000000000000404", "train", server.url("/missing.jpg"), _b64md5(GOOD_LAND), ""),
        ("00000000000slow0", "train", server.url("/slow.jpg"), _b64md5(SLOW_IMG), ""),
        ("0000000000flaky0", "train", server.url("/flaky.jpg"), _b64md5(RETRY_IMG), ""),
        ("00000000limited0", "train", server.url("/limited.jpg"), "", ""),
        ("00000000000cut00", "train", server.url("/cut.jpg"), _b64md5(GOOD_LAND), ""),
    ]
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, rows, bom=True)
    out = tmp_path / "out"
    args = ["--csv", csv_path, "--out", out, "--workers", 4, "--retries", 2,
            "--timeout", TIMEOUT, "--backoff", 0.01]
    return csv_path, out, args


def test_mixed_run_report_retries_and_resume(server, scenario, capsys):
    csv_path, out, args = scenario
    code, stdout, _ = _run(args, capsys)
    assert code == 1  # some images failed

    # Good and retried images exist, are JPEGs with short side 256 and the aspect ratio kept.
    expected = {"000000000000good": (640, 480), "00000000000good2": (300, 700),
                "0000000000flaky0": (512, 400), "00000000limited0": (512, 400)}
    for image_id, (w, h) in expected.items():
        with Image.open(out / f"{image_id}.jpg") as img:
            img.load()
            assert img.format == "JPEG" and img.mode == "RGB"
            assert min(img.size) == 256
            assert abs(img.size[0] / img.size[1] - w / h) < 0.01

    # Only complete final files: no partial or temporary file of any failed image.
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{i}.jpg" for i in expected] + [dl.REPORT_NAME])

    report = {r["image_id"]: r for r in _read_report(out / dl.REPORT_NAME)}
    assert {k: v["reason"] for k, v in report.items()} == {
        "00000000corrupt0": "checksum mismatch",
        "0000000000notimg": "not an image",
        "0000000000000404": "http 404",
        "00000000000slow0": "timeout",
        "00000000000cut00": "connection error",
    }
    assert report["0000000000000404"]["url"] == server.url("/missing.jpg")
    assert "OriginalMD5 says" in report["00000000corrupt0"]["detail"]

    # Retries: 404 and checksum failures are permanent (one request), transient ones retried.
    c = server.counts
    assert c["/missing.jpg"] == 1
    assert c["/corrupt.jpg"] == 1
    assert c["/text.jpg"] == 1
    assert c["/slow.jpg"] == 3  # first try + 2 retries, all timed out
    assert c["/cut.jpg"] == 3
    assert c["/flaky.jpg"] == 2 and c["/limited.jpg"] == 2

    # The printed summary groups failures by reason.
    assert "downloaded: 4" in stdout and "failed: 5" in stdout
    for reason in ("checksum mismatch: 1", "http 404: 1", "timeout: 1", "not an image: 1", "connection error: 1"):
        assert reason in stdout

    # Rerun: finished images are not requested again; failed ones are tried again.
    before = dict(server.counts)
    code2, stdout2, _ = _run(args, capsys)
    assert code2 == 1
    for path in ("/good1.jpg", "/good2.png", "/flaky.jpg", "/limited.jpg"):
        assert server.counts[path] == before[path], path
    assert server.counts["/missing.jpg"] == before["/missing.jpg"] + 1
    assert "already present: 4" in stdout2 and "downloaded: 0" in stdout2
    assert len(_read_report(out / dl.REPORT_NAME)) == 5


def test_all_good_exit_zero_and_rerun_makes_no_request(server, tmp_path, capsys):
    server.routes["/a.jpg"] = ok(GOOD_LAND)
    server.routes["/b.png"] = ok(GOOD_PORT)
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [("aaaa", "test", server.url("/a.jpg"), _b64md5(GOOD_LAND), ""),
                          ("bbbb", "test", server.url("/b.png"), _b64md5(GOOD_PORT), "")])
    report = tmp_path / "rep" / "failures.csv"
    args = ["--csv", csv_path, "--out", tmp_path / "o", "--timeout", 5, "--report", report]
    assert _run(args, capsys)[0] == 0
    assert _read_report(report) == []  # header only
    assert sum(server.counts.values()) == 2
    assert _run(args, capsys)[0] == 0
    assert sum(server.counts.values()) == 2


def test_no_resize_keeps_jpeg_bytes_and_limit(server, tmp_path, capsys):
    server.routes["/a.jpg"] = ok(GOOD_LAND)
    server.routes["/b.png"] = ok(GOOD_PORT)
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [("aaaa", "test", server.url("/a.jpg"), _b64md5(GOOD_LAND), ""),
                          ("bbbb", "test", server.url("/b.png"), _b64md5(GOOD_PORT), "")])
    out = tmp_path / "o"
    code, stdout, _ = _run(["--csv", csv_path, "--out", out, "--no-resize", "--limit", 1], capsys)
    assert code == 0
    assert (out / "aaaa.jpg").read_bytes() == GOOD_LAND
    assert not (out / "bbbb.jpg").exists()
    assert "rows: 1" in stdout and "/b.png" not in server.counts


def test_thumbnail_column_skips_checksum_and_no_checksum_flag(server, tmp_path, capsys):
    wrong = _b64md5(b"something else")
    server.routes["/orig.jpg"] = ok(GOOD_LAND)
    server.routes["/thumb.jpg"] = ok(RETRY_IMG)
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [("aaaa", "test", server.url("/orig.jpg"), wrong, server.url("/thumb.jpg"))])
    code, _, err = _run(["--csv", csv_path, "--out", tmp_path / "t", "--url-column", "Thumbnail300KURL"], capsys)
    assert code == 0 and "checksums are not checked" in err
    assert server.counts == {"/thumb.jpg": 1}
    # The same wrong MD5 with the original URL fails, unless --no-checksum.
    assert _run(["--csv", csv_path, "--out", tmp_path / "o1"], capsys)[0] == 1
    assert _run(["--csv", csv_path, "--out", tmp_path / "o2", "--no-checksum"], capsys)[0] == 0
    assert (tmp_path / "o2" / "aaaa.jpg").is_file()


def test_bad_rows_are_reported_with_file_line_and_field(server, tmp_path, capsys):
    server.routes["/a.jpg"] = ok(GOOD_LAND)
    csv_path = tmp_path / "bad.csv"
    _write_csv(csv_path, [
        ("aaaa", "test", server.url("/a.jpg"), "", ""),
        ("aaaa", "test", server.url("/a.jpg"), "", ""),            # duplicate id
        ("", "test", server.url("/a.jpg"), "", ""),                # empty id
        ("../../etc", "test", server.url("/a.jpg"), "", ""),       # path in the id
        ("cccc", "test", "", "", ""),                              # no URL
        ("dddd", "test", "file:///etc/passwd", "", ""),            # not http
        ("eeee", "test", server.url("/a.jpg"), "not-base64!", ""),  # bad MD5 field
        ("ffff", "test"),                                          # short row
    ])
    code, stdout, _ = _run(["--csv", csv_path, "--out", tmp_path / "o"], capsys)
    assert code == 1
    rows = _read_report(tmp_path / "o" / dl.REPORT_NAME)
    assert len(rows) == 7
    assert server.counts == {"/a.jpg": 1}
    details = [r["detail"] for r in rows]
    assert all(str(csv_path) in d for d in details)
    assert [r["reason"] for r in rows].count("bad csv row") == 6
    assert any("line 3, image aaaa" in d and "ImageID" in d for d in details)
    assert any("image eeee" in d and "OriginalMD5" in d for d in details)
    assert any("image dddd" in d and "not an http" in d for d in details)
    assert any("image ffff" in d and "fields" in d for d in details)
    assert not list((tmp_path / "o").glob("*etc*"))


def test_missing_column_and_missing_file_exit_2(tmp_path, capsys):
    csv_path = tmp_path / "x.csv"
    _write_csv(csv_path, [("aaaa", "u")], columns=("ImageID", "URL"))
    code, _, err = _run(["--csv", csv_path, "--out", tmp_path / "o"], capsys)
    assert code == 2 and str(csv_path) in err and "'OriginalURL'" in err
    code, _, err = _run(["--csv", tmp_path / "nope.csv", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "nope.csv" in err


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as exc:
        dl.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--csv", "--out", "--workers", "--retries", "--timeout", "--limit",
                "--url-column", "--no-resize", "--no-checksum", "--report", "Exit status"):
        assert opt in text


def test_backoff_grows_with_jitter_and_cap():
    import random
    rng = random.Random(0)
    for attempt in range(5):
        d = 0.5 * 2 ** attempt
        samples = [dl.backoff_delay(attempt, 0.5, rng) for _ in range(200)]
        assert all(d / 2 <= s <= d for s in samples)
        assert max(samples) - min(samples) > d / 10  # jitter really varies
    assert dl.backoff_delay(30, 1.0, rng, cap=4.0) <= 4.0


def test_target_size_and_md5_decoding():
    assert dl.target_size(640, 480) == (341, 256)
    assert dl.target_size(100, 300) == (256, 768)
    assert dl.decode_md5(_b64md5(b"x")) == hashlib.md5(b"x").digest()
    with pytest.raises(ValueError):
        dl.decode_md5(base64.b64encode(b"short").decode())


def test_truncated_jpeg_without_md5_is_corrupt_and_leaves_nothing(server, tmp_path, capsys):
    server.routes["/trunc.jpg"] = ok(GOOD_LAND[: len(GOOD_LAND) // 2])
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [("tttt", "test", server.url("/trunc.jpg"), "", "")])
    out = tmp_path / "o"
    assert _run(["--csv", csv_path, "--out", out], capsys)[0] == 1
    assert [r["reason"] for r in _read_report(out / dl.REPORT_NAME)] == ["corrupt image"]
    assert [p.name for p in out.iterdir()] == [dl.REPORT_NAME]


def test_redirects_followed_but_flickr_placeholder_is_removed(server, tmp_path, capsys):
    def redirect(target):
        def route(h, n):
            h.send_response(302)
            h.send_header("Location", server.url(target))
            h.send_header("Content-Length", "0")
            h.end_headers()
        return route

    placeholder = _image_bytes((500, 374), fmt="PNG", seed=5)
    server.routes.update({
        "/moved.jpg": redirect("/real.jpg"),
        "/real.jpg": ok(GOOD_LAND),
        "/gone.jpg": redirect("/photo_unavailable.png"),
        "/photo_unavailable.png": ok(placeholder),
    })
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [("mmmm", "test", server.url("/moved.jpg"), _b64md5(GOOD_LAND), ""),
                          ("gggg", "test", server.url("/gone.jpg"), "", "")])
    out = tmp_path / "o"
    assert _run(["--csv", csv_path, "--out", out], capsys)[0] == 1
    assert (out / "mmmm.jpg").is_file() and not (out / "gggg.jpg").exists()
    (row,) = _read_report(out / dl.REPORT_NAME)
    assert row["image_id"] == "gggg" and row["reason"] == "removed by host"
    assert server.counts["/gone.jpg"] == 1  # permanent: not retried


# --------------------------------------------------------------------------- issue 13: bounds,
# redirects, files already there, permissions, unreadable CSVs

TRICKLE_GAP = 0.5  # a slow server sends one byte this often: each read is quick, the whole is not
TRICKLE_MAX = 40  # ... and at most this many bytes that way (20 s), then the rest at once


def _trickle(h, sent, data: bytes) -> bool:
    """Send ``data`` a byte every TRICKLE_GAP s (at most TRICKLE_MAX bytes); False once the client left."""
    for i, byte in enumerate(data[:TRICKLE_MAX]):
        try:
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
        except OSError:
            return False
        sent[h.path] = i + 1
        time.sleep(TRICKLE_GAP)
    try:
        h.wfile.write(data[TRICKLE_MAX:])
    except OSError:
        return False
    return True


def trickle_in_headers(body, sent):
    """Headers a byte at a time; a client that waits them out gets a good image."""
    def route(h, n):
        head = (b"HTTP/1.0 200 OK\r\nX-Slow: " + b"s" * TRICKLE_MAX + b"\r\nContent-Type: image/jpeg\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode())
        if _trickle(h, sent, head):
            h.wfile.write(body)
        h.close_connection = True
    return route


def trickle_in_body(body, sent):
    """Complete headers, then the body a byte at a time."""
    def route(h, n):
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        _trickle(h, sent, body)
        h.close_connection = True
    return route


def test_timeout_bounds_the_whole_transfer_headers_and_body(server, tmp_path, capsys):
    # Each byte comes within 0.5 s, so a per-read timeout of 1 s never fires: only a bound on
    # the whole transfer stops these. Waited out, both would deliver a good image (exit 0).
    sent = {}
    server.routes["/slow-head.jpg"] = trickle_in_headers(SLOW_IMG, sent)
    server.routes["/slow-body.jpg"] = trickle_in_body(SLOW_IMG, sent)
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [("hhhh", "test", server.url("/slow-head.jpg"), _b64md5(SLOW_IMG), ""),
                          ("bbbb", "test", server.url("/slow-body.jpg"), _b64md5(SLOW_IMG), "")])
    out = tmp_path / "o"
    code, stdout, _ = _run(["--csv", csv_path, "--out", out, "--timeout", 1.0, "--retries", 0,
                            "--workers", 2], capsys)
    assert code == 1
    rows = {r["image_id"]: r for r in _read_report(out / dl.REPORT_NAME)}
    assert {k: r["reason"] for k, r in rows.items()} == {"hhhh": "timeout", "bbbb": "timeout"}
    assert all("whole transfer" in r["detail"] for r in rows.values())
    assert sorted(p.name for p in out.iterdir()) == [dl.REPORT_NAME]
    # The client gave up long before the servers were through trickling.
    assert 0 < sent["/slow-head.jpg"] < TRICKLE_MAX and 0 < sent["/slow-body.jpg"] < TRICKLE_MAX
    assert server.counts == {"/slow-head.jpg": 1, "/slow-body.jpg": 1}


def test_redirects_stay_on_http_and_are_bounded(server, tmp_path, capsys):
    def redirect_to(location):
        def route(h, n):
            h.send_response(302)
            h.send_header("Location", location(h))
            h.send_header("Content-Length", "0")
            h.end_headers()
        return route

    def next_hop(h):
        # /loop/<k> -> /loop/<k+1>; the chain ends (404) after 50 hops so the server stops by itself.
        k = int(h.path.rsplit("/", 1)[1])
        return server.url(f"/loop/{k + 1}")

    server.routes.update({
        "/to-ftp.jpg": redirect_to(lambda h: "ftp://127.0.0.1:9/image.jpg"),
        "/to-file.jpg": redirect_to(lambda h: "file:///etc/hostname"),
        "/to-http.jpg": redirect_to(lambda h: server.url("/real.jpg")),
        "/real.jpg": ok(GOOD_LAND),
    })
    for k in range(50):
        server.routes[f"/loop/{k}"] = redirect_to(next_hop)
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [("ffff", "test", server.url("/to-ftp.jpg"), "", ""),
                          ("llll", "test", server.url("/to-file.jpg"), "", ""),
                          ("oooo", "test", server.url("/loop/0"), "", ""),
                          ("hhhh", "test", server.url("/to-http.jpg"), _b64md5(GOOD_LAND), "")])
    out = tmp_path / "o"
    code, stdout, _ = _run(["--csv", csv_path, "--out", out, "--timeout", 5, "--backoff", 0.01], capsys)
    assert code == 1
    rows = {r["image_id"]: r for r in _read_report(out / dl.REPORT_NAME)}
    assert {k: r["reason"] for k, r in rows.items()} == {
        "ffff": "bad redirect", "llll": "bad redirect", "oooo": "bad redirect"}
    assert "ftp://127.0.0.1:9/image.jpg" in rows["ffff"]["detail"]
    assert f"more than {dl.MAX_REDIRECTS} redirects" in rows["oooo"]["detail"]
    # Permanent: asked once each; the loop is left after MAX_REDIRECTS hops.
    assert server.counts["/to-ftp.jpg"] == 1 and server.counts["/to-file.jpg"] == 1
    assert sum(v for k, v in server.counts.items() if k.startswith("/loop/")) == dl.MAX_REDIRECTS + 1
    assert sorted(p.name for p in out.iterdir()) == sorted(["hhhh.jpg", dl.REPORT_NAME])


def test_broken_files_already_there_are_replaced_good_ones_kept(server, tmp_path, capsys):
    mine = _image_bytes((200, 150), seed=7)  # a complete image the user put there: kept
    half = GOOD_LAND[: len(GOOD_LAND) // 2]
    for name in ("zero", "trunc", "text", "mine", "gone"):
        server.routes[f"/{name}.jpg"] = ok(GOOD_LAND)
    del server.routes["/gone.jpg"]  # 404: the broken file cannot be replaced
    out = tmp_path / "o"
    out.mkdir()
    (out / "zero.jpg").write_bytes(b"")
    (out / "trunc.jpg").write_bytes(half)
    (out / "text.jpg").write_bytes(b"<html>error page</html>")
    (out / "mine.jpg").write_bytes(mine)
    (out / "gone.jpg").write_bytes(half)
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [(n, "test", server.url(f"/{n}.jpg"), _b64md5(GOOD_LAND), "")
                          for n in ("zero", "trunc", "text", "mine", "gone")])
    code, stdout, _ = _run(["--csv", csv_path, "--out", out, "--timeout", 5], capsys)
    assert code == 1
    assert "already present: 1" in stdout and "downloaded: 3" in stdout
    assert "downloaded again: 3" in stdout
    for name in ("zero", "trunc", "text"):
        assert server.counts[f"/{name}.jpg"] == 1
        with Image.open(out / f"{name}.jpg") as img:
            img.load()
            assert min(img.size) == 256
    assert "/mine.jpg" not in server.counts and (out / "mine.jpg").read_bytes() == mine
    (row,) = _read_report(out / dl.REPORT_NAME)
    assert row["image_id"] == "gone" and row["reason"] == "http 404" and "left as is" in row["detail"]
    assert (out / "gone.jpg").read_bytes() == half
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.jpg" for n in ("zero", "trunc", "text", "mine", "gone")] + [dl.REPORT_NAME])


def test_no_resize_files_there_are_judged_by_original_size_and_md5(server, tmp_path, capsys):
    # A byte changed in the middle of a JPEG still decodes: only size + MD5 can tell.
    flipped = bytearray(GOOD_LAND)
    flipped[len(flipped) // 2] ^= 0x55
    with Image.open(io.BytesIO(bytes(flipped))) as img:
        img.load()  # the premise: Pillow alone would call it complete
    server.routes["/same.jpg"] = ok(GOOD_LAND)
    server.routes["/flip.jpg"] = ok(GOOD_LAND)
    out = tmp_path / "o"
    out.mkdir()
    (out / "same.jpg").write_bytes(GOOD_LAND)
    (out / "flip.jpg").write_bytes(bytes(flipped))
    csv_path = tmp_path / "images.csv"
    cols = ("ImageID", "OriginalURL", "OriginalSize", "OriginalMD5")
    _write_csv(csv_path, [("same", server.url("/same.jpg"), len(GOOD_LAND), _b64md5(GOOD_LAND)),
                          ("flip", server.url("/flip.jpg"), len(GOOD_LAND), _b64md5(GOOD_LAND))],
               columns=cols)
    code, stdout, _ = _run(["--csv", csv_path, "--out", out, "--no-resize", "--timeout", 5], capsys)
    assert code == 0
    assert server.counts == {"/flip.jpg": 1}
    assert (out / "flip.jpg").read_bytes() == GOOD_LAND == (out / "same.jpg").read_bytes()
    # A malformed OriginalSize is a bad row, like a malformed OriginalMD5.
    _write_csv(csv_path, [("size", server.url("/same.jpg"), "12kB", _b64md5(GOOD_LAND))], columns=cols)
    assert _run(["--csv", csv_path, "--out", tmp_path / "o2"], capsys)[0] == 1
    (row,) = _read_report(tmp_path / "o2" / dl.REPORT_NAME)
    assert row["reason"] == "bad csv row" and "OriginalSize" in row["detail"] and "line 2" in row["detail"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_files_get_the_usual_permissions(server, tmp_path, capsys, umask, mode):
    server.routes["/a.jpg"] = ok(GOOD_LAND)
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [("aaaa", "test", server.url("/a.jpg"), _b64md5(GOOD_LAND), "")])
    out = tmp_path / "o"
    old = os.umask(umask)
    try:
        assert _run(["--csv", csv_path, "--out", out, "--timeout", 5], capsys)[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((out / "aaaa.jpg").stat().st_mode) == mode
    assert stat.S_IMODE((out / dl.REPORT_NAME).stat().st_mode) == mode


def _assert_csv_error(code, err, out, needles, server):
    assert code == 2
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err
    (row,) = _read_report(out / dl.REPORT_NAME)
    assert row["reason"] == "unreadable csv" and all(n in row["detail"] for n in needles)
    assert server.counts == {}  # stopped before any request


def test_unreadable_csv_is_a_clear_error_with_exit_2_and_a_report(server, tmp_path, capsys):
    server.routes["/a.jpg"] = ok(GOOD_LAND)
    good_row = ("aaaa", "test", server.url("/a.jpg"), "", "")
    # Not UTF-8 on line 3 (Latin-1 "é"), after a good row.
    latin = tmp_path / "latin1.csv"
    _write_csv(latin, [good_row])
    with open(latin, "ab") as fh:
        fh.write(b"bbbb,caf\xe9," + server.url("/a.jpg").encode() + b",,\r\n")
    code, _, err = _run(["--csv", latin, "--out", tmp_path / "o1"], capsys)
    _assert_csv_error(code, err, tmp_path / "o1", [str(latin), "line 3", "UTF-8"], server)

    # A folder given as the CSV.
    folder = tmp_path / "a_folder.csv"
    folder.mkdir()
    code, _, err = _run(["--csv", folder, "--out", tmp_path / "o2"], capsys)
    _assert_csv_error(code, err, tmp_path / "o2", [str(folder)], server)

    # Malformed as CSV: a field over the csv module's size limit on line 2.
    huge = tmp_path / "huge.csv"
    _write_csv(huge, [("cccc", "x" * 200_000, server.url("/a.jpg"), "", ""), good_row])
    code, _, err = _run(["--csv", huge, "--out", tmp_path / "o3"], capsys)
    _assert_csv_error(code, err, tmp_path / "o3", [str(huge), "line 2", "malformed CSV"], server)

    # Missing file: exit 2 and a report too.
    code, _, err = _run(["--csv", tmp_path / "nope.csv", "--out", tmp_path / "o4"], capsys)
    _assert_csv_error(code, err, tmp_path / "o4", ["nope.csv"], server)


def test_a_file_at_the_report_name_that_is_not_a_report_is_left_alone(server, tmp_path, capsys):
    server.routes["/a.jpg"] = ok(GOOD_LAND)
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [("aaaa", "test", server.url("/a.jpg"), "", "")])
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own,notes\n1,2,3\n")
    code, _, err = _run(["--csv", csv_path, "--out", tmp_path / "o", "--report", notes], capsys)
    assert code == 2 and str(notes) in err and "left as is" in err
    assert notes.read_text() == "my,own,notes\n1,2,3\n"
    assert server.counts == {}
    # Its own report from an earlier run is replaced as before.
    report = tmp_path / "rep.csv"
    assert _run(["--csv", csv_path, "--out", tmp_path / "o", "--report", report], capsys)[0] == 0
    assert _run(["--csv", csv_path, "--out", tmp_path / "o", "--report", report], capsys)[0] == 0
    assert _read_report(report) == []


def test_help_says_timeout_bounds_the_whole_transfer(capsys):
    with pytest.raises(SystemExit):
        dl.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one attempt at one file may take in all" in text
    assert "http/https only" in text and "not UTF-8" in text


@pytest.fixture
def tls_server(tmp_path):
    """An HTTPS server on 127.0.0.1 with a fresh self-signed certificate (needs the openssl tool)."""
    import shutil
    import ssl
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    s = _Server(tls_context=ctx)
    s.cert = cert
    yield s
    s.close()


def test_https_download_deadline_and_certificate_check(tls_server, tmp_path, capsys, monkeypatch):
    sent = {}
    tls_server.routes["/a.jpg"] = ok(GOOD_LAND)
    tls_server.routes["/slow-body.jpg"] = trickle_in_body(SLOW_IMG, sent)
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [("aaaa", "test", tls_server.url("/a.jpg"), _b64md5(GOOD_LAND), ""),
                          ("ssss", "test", tls_server.url("/slow-body.jpg"), _b64md5(SLOW_IMG), "")])
    args = ["--csv", csv_path, "--timeout", 1.0, "--retries", 0, "--workers", 1]
    # Trusted certificate (OpenSSL reads SSL_CERT_FILE when the default context is made).
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.cert))
    code, _, _ = _run(args + ["--out", tmp_path / "o"], capsys)
    assert code == 1
    assert (tmp_path / "o" / "aaaa.jpg").is_file()
    (row,) = _read_report(tmp_path / "o" / dl.REPORT_NAME)
    assert row["image_id"] == "ssss" and row["reason"] == "timeout"
    assert 0 < sent["/slow-body.jpg"] < TRICKLE_MAX
    # Untrusted certificate: refused, not retried.
    monkeypatch.delenv("SSL_CERT_FILE")
    code, _, _ = _run(args + ["--out", tmp_path / "o2", "--limit", 1], capsys)
    assert code == 1
    (row,) = _read_report(tmp_path / "o2" / dl.REPORT_NAME)
    assert row["reason"] == "ssl error" and "certificate" in row["detail"]


def test_a_file_that_appears_during_the_download_is_not_replaced(server, tmp_path, capsys):
    # The handler plays another program: it puts a file at the final name while serving.
    out = tmp_path / "o"
    theirs_good = _image_bytes((120, 90), seed=11)
    theirs_bad = b"half-written by someone else"

    def put_then_send(name, content):
        def route(h, n):
            (out / f"{name}.jpg").write_bytes(content)
            _send(h, GOOD_LAND)
        return route

    server.routes["/good.jpg"] = put_then_send("good", theirs_good)
    server.routes["/bad.jpg"] = put_then_send("bad", theirs_bad)
    csv_path = tmp_path / "images.csv"
    _write_csv(csv_path, [("good", "test", server.url("/good.jpg"), _b64md5(GOOD_LAND), ""),
                          ("bad", "test", server.url("/bad.jpg"), _b64md5(GOOD_LAND), "")])
    code, stdout, _ = _run(["--csv", csv_path, "--out", out, "--timeout", 5], capsys)
    assert code == 1
    assert (out / "good.jpg").read_bytes() == theirs_good
    assert (out / "bad.jpg").read_bytes() == theirs_bad
    (row,) = _read_report(out / dl.REPORT_NAME)
    assert row["image_id"] == "bad" and row["reason"] == "write error"
    assert "appeared there during the download" in row["detail"] and "left as is" in row["detail"]
    assert "already present: 1" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(["good.jpg", "bad.jpg", dl.REPORT_NAME])


def test_csv_that_turns_unreadable_during_the_run_stops_with_exit_2(server, tmp_path, capsys):
    # 40 rows; serving the first appends a line that is not UTF-8. The main thread cannot read
    # past row 16 (its window of pending jobs, one worker) before that first job is done.
    csv_path = tmp_path / "images.csv"

    def append_bad_line(h, n):
        if n == 0:
            with open(csv_path, "ab") as fh:
                fh.write(b"zzzz,caf\xe9,http://127.0.0.1:9/z.jpg,,\n")
        _send(h, GOOD_LAND)

    server.routes["/first.jpg"] = append_bad_line
    server.routes["/a.jpg"] = ok(GOOD_LAND)
    rows = [("first", "test", server.url("/first.jpg"), "", "")]
    rows += [(f"img{k:04d}", "test", server.url("/a.jpg"), "", "") for k in range(39)]
    _write_csv(csv_path, rows)
    out = tmp_path / "o"
    code, stdout, err = _run(["--csv", csv_path, "--out", out, "--workers", 1, "--timeout", 5], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{csv_path}: line 42: not UTF-8" in err
    (row,) = _read_report(out / dl.REPORT_NAME)
    assert row["reason"] == "unreadable csv" and "line 42" in row["detail"]
    # Every row before the bad line was done; the jobs in flight were finished, not dropped.
    assert "downloaded: 40" in stdout
    assert len(list(out.glob("*.jpg"))) == 40
