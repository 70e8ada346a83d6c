#!/usr/bin/env python
"""Download Open Images (2018_04) images listed in an image CSV, in parallel, resumably.

Input: an Open Images image list CSV, UTF-8 (for example ``train-images-with-labels-with-rotation.csv``
or ``test-images-with-rotation.csv`` of the 2018_04 release) with at least the columns
``ImageID`` and the chosen URL column (``OriginalURL`` by default, or ``Thumbnail300KURL``);
``OriginalMD5`` (base64 of the 16-byte MD5, as in the official CSVs) is used for the checksum
and ``OriginalSize`` (bytes) to judge files already there, when present. A UTF-8 byte-order
mark at the start of the file is accepted.

Output, in ``--out``: ``<ImageID>.jpg`` for every image that downloaded and checked out
(RGB JPEG, short side 256 unless ``--no-resize``; mode 0666 less the umask, as ``open()``
gives), and a failure report (``download_failures.csv`` unless ``--report``) with one row per
image that failed: ``image_id, url, reason, detail``. The report is rewritten on every run, so
it always describes the last run; it has only a header when nothing failed. A file at the
report's name that is not such a report is never replaced.

Bounds: ``--timeout`` bounds the whole of one attempt at one file (connecting, at most
``MAX_REDIRECTS`` redirects, which must stay on http/https, headers and body).

Exit status: 0 when every listed image is present at the end, 1 when at least one image failed
(see the report), 2 for a usage error or an unreadable CSV (missing, a folder, not UTF-8,
malformed; the message and the report name the file and line), 130 when interrupted.

Resuming: an image whose ``<ImageID>.jpg`` already exists and is complete (it decodes fully;
with ``--no-resize``, equal to the CSV's size and MD5 where given) is not requested again; a
0-byte, truncated or non-image file there is downloaded again and replaced. Files are written
under a temporary name and renamed, so a final name written here always holds a complete image.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import codecs
import collections
import concurrent.futures as cf
import csv
import errno
import functools
import hashlib
import http.client
import io
import os
import random
import re
import secrets
import socket
import ssl
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

SHORT_SIDE = 256
JPEG_QUALITY = 90
REPORT_NAME = "download_failures.csv"
REPORT_FIELDS = ("image_id", "url", "reason", "detail")
URL_COLUMNS = ("OriginalURL", "Thumbnail300KURL")
MD5_COLUMN = "OriginalMD5"
SIZE_COLUMN = "OriginalSize"
USER_AGENT = "BiAM-rebuilt-openimages-downloader/1.0 (+urllib)"
MAX_BACKOFF_S = 60.0
CHUNK = 1 << 16
# Redirects followed per attempt; a longer chain is a failure ("bad redirect").
MAX_REDIRECTS = 10
# Open Images ids are hex strings; anything with a path separator or a leading dot could
# escape the output folder or hide the file, so it is refused.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# Flickr answers deleted photos with a redirect to this placeholder image.
_REMOVED_MARKER = "photo_unavailable"

# Failure reasons (the report's `reason` column); HTTP errors are "http <code>".
R_TIMEOUT = "timeout"
R_CONNECTION = "connection error"
R_SSL = "ssl error"
R_CHECKSUM = "checksum mismatch"
R_NOT_IMAGE = "not an image"
R_CORRUPT = "corrupt image"
R_TOO_LARGE = "image too large"
R_REMOVED = "removed by host"
R_BAD_ROW = "bad csv row"
R_DUPLICATE = "duplicate image id"
R_WRITE = "write error"
R_REDIRECT = "bad redirect"
R_CSV = "unreadable csv"


class CsvFormatError(ValueError):
    """The CSV cannot be used at all: missing, unreadable, not UTF-8, malformed, missing column."""


@dataclass(frozen=True)
class Job:
    """One image to fetch: its id, URL, expected raw MD5 of the original (None: no check), CSV
    line, and the original's size in bytes (``OriginalSize``; None: not given)."""

    image_id: str
    url: str
    md5: Optional[bytes]
    line: int
    size: Optional[int] = None


@dataclass
class Outcome:
    """Result of one job: ``ok`` or a failure ``reason`` with ``detail``; ``attempts`` made.

    ``present``: the file was already there and complete (nothing requested). ``replaced``:
    why a file already there was judged incomplete and downloaded again ("" if not).
    """

    job: Job
    ok: bool
    reason: str = ""
    detail: str = ""
    attempts: int = 0
    present: bool = False
    replaced: str = ""


class DownloadError(Exception):
    """A failed attempt: ``reason`` for the report, ``transient`` if worth retrying."""

    def __init__(self, reason: str, detail: str, transient: bool, retry_after: Optional[float] = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.transient = transient
        self.retry_after = retry_after


# --------------------------------------------------------------------------- CSV


def decode_md5(value: str) -> bytes:
    """Base64 MD5 string (as in ``OriginalMD5``) -> the 16 raw digest bytes; ValueError if not."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{value!r} is not valid base64 ({exc})") from exc
    if len(raw) != 16:
        raise ValueError(f"{value!r} decodes to {len(raw)} bytes, an MD5 has 16")
    return raw


def _open_csv(path: Path):
    """Open ``path`` for reading bytes; lines are decoded by ``_TextLines``."""
    try:
        return open(path, "rb")
    except OSError as exc:
        # Missing file, a directory, no permission: all end here, with the file named.
        raise CsvFormatError(f"{path}: cannot open the image CSV ({exc})") from exc


class _TextLines:
    """Lines of the binary file ``fh`` decoded as UTF-8; a leading byte-order mark is dropped.

    ``n`` is the number of lines read so far, so a csv.Error can name the line where it
    happened (``csv.reader.line_num`` is not advanced for a line that fails to parse).
    Decoding line by line lets a bad byte be reported with its line number too. Raises
    CsvFormatError naming the file and the line when a line is not UTF-8 or cannot be read.
    """

    def __init__(self, fh, path: Path):
        self._fh = fh
        self._path = path
        self.n = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            raw = next(self._fh)
        except OSError as exc:
            raise CsvFormatError(f"{self._path}: line {self.n + 1}: cannot read the image CSV ({exc})") from exc
        self.n += 1
        if self.n == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CsvFormatError(
                f"{self._path}: line {self.n}: not UTF-8 text (byte {raw[exc.start]:#04x} at byte "
                f"{exc.start + 1} of the line); save the CSV as UTF-8"
            ) from exc


def _csv_rows(reader, lines: _TextLines, path: Path) -> Iterator:
    """Rows of ``reader``; a csv.Error becomes a CsvFormatError naming the file and line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CsvFormatError(f"{path}: line {lines.n}: malformed CSV ({exc})") from exc
        yield row


def _check_header(path: Path, fieldnames, url_column: str) -> bool:
    """Raise CsvFormatError when a needed column is missing; return whether MD5s are present."""
    if not fieldnames:
        raise CsvFormatError(f"{path}: empty file, expected a header with ImageID and {url_column}")
    for column in ("ImageID", url_column):
        if column not in fieldnames:
            raise CsvFormatError(
                f"{path}: missing column {column!r} (header has: {', '.join(fieldnames)})"
            )
    return MD5_COLUMN in fieldnames


def count_rows(path: Path, limit: Optional[int]) -> int:
    """Number of data rows of the CSV at ``path`` (at most ``limit``), for the progress bar.

    Reading the whole file here also means a byte that is not UTF-8 or a malformed line is
    found (CsvFormatError) before any download starts.
    """
    with _open_csv(path) as fh:
        lines = _TextLines(fh, path)
        rows = _csv_rows(csv.reader(lines), lines, path)
        next(rows, None)
        n = 0
        for row in rows:
            if not row:
                continue  # DictReader skips blank lines too; keep the counts equal
            n += 1
            if limit is not None and n >= limit:
                break
    return n


def iter_rows(path: Path, url_column: str, use_md5: bool, limit: Optional[int]) -> Iterator["Job | Outcome"]:
    """Stream the CSV at ``path``: a ``Job`` per usable row, a failed ``Outcome`` per bad row.

    ``use_md5`` False ignores the MD5 and size columns (they describe the original file).
    At most ``limit`` data rows are read. Raises CsvFormatError, naming the file (and line),
    when the file cannot be read, a needed column is missing, a line is not UTF-8 or the
    CSV is malformed.
    """
    with _open_csv(path) as fh:
        lines = _TextLines(fh, path)
        reader = csv.DictReader(lines)
        try:
            fieldnames = reader.fieldnames
        except csv.Error as exc:
            raise CsvFormatError(f"{path}: line {lines.n}: malformed CSV header ({exc})") from exc
        has_md5 = _check_header(path, fieldnames, url_column)
        has_size = SIZE_COLUMN in fieldnames
        seen: set[str] = set()
        for n, row in enumerate(_csv_rows(reader, lines, path)):
            if limit is not None and n >= limit:
                break
            line = reader.line_num
            image_id = (row.get("ImageID") or "").strip()
            url = (row.get(url_column) or "").strip()
            where = f"{path}: line {line}, image {image_id or '<empty>'}"

            def bad(reason: str, detail: str, image_id=image_id, line=line, url=url, where=where) -> Outcome:
                job = Job(image_id or f"<line {line}>", url, None, line)
                return Outcome(job, False, reason, f"{where}: {detail}")

            if None in row or None in row.values():
                # DictReader files extra fields under None and fills missing ones with None.
                n_fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or ())
                yield bad(R_BAD_ROW, f"row has {n_fields} fields, header has {len(fieldnames)}")
                continue
            if not _ID_RE.match(image_id):
                yield bad(R_BAD_ROW, f"field ImageID {image_id!r} is empty or not a plain id")
                continue
            if not url:
                yield bad(R_BAD_ROW, f"field {url_column} is empty")
                continue
            if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
                # urllib would also open file:// and ftp:// URLs; a CSV must not read local files.
                yield bad(R_BAD_ROW, f"field {url_column} {url!r} is not an http(s) URL")
                continue
            md5 = None
            md5_text = (row.get(MD5_COLUMN) or "").strip() if (use_md5 and has_md5) else ""
            if md5_text:
                try:
                    md5 = decode_md5(md5_text)
                except ValueError as exc:
                    yield bad(R_BAD_ROW, f"field {MD5_COLUMN}: {exc}")
                    continue
            size = None
            size_text = (row.get(SIZE_COLUMN) or "").strip() if (use_md5 and has_size) else ""
            if size_text:
                if not size_text.isdigit():
                    yield bad(R_BAD_ROW, f"field {SIZE_COLUMN} {size_text!r} is not a byte count")
                    continue
                size = int(size_text)
            if image_id in seen:
                yield bad(R_DUPLICATE, "field ImageID repeats an earlier row; the earlier row is used")
                continue
            seen.add(image_id)
            yield Job(image_id, url, md5, line, size)


# --------------------------------------------------------------------------- fetching


def backoff_delay(attempt: int, base: float, rng: random.Random, cap: float = MAX_BACKOFF_S) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): exponential with jitter.

    The delay lies in [d/2, d] with d = min(cap, base * 2**attempt); the random half keeps
    many workers that failed together from retrying in lockstep.
    """
    d = min(cap, base * (2 ** attempt))
    return d / 2 + rng.uniform(0, d / 2)


def _retry_after(headers) -> Optional[float]:
    """Seconds from a ``Retry-After: <int>`` header, else None (HTTP dates are ignored)."""
    value = headers.get("Retry-After") if headers is not None else None
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


class _DeadlineRaw(io.RawIOBase):
    """Raw reader over a connected socket that enforces a deadline on every receive.

    Before each receive the socket timeout is set to what is left until ``deadline`` (at most
    ``timeout``), so a server that trickles a byte at a time, in the headers or in the body,
    cannot keep the transfer going past the deadline.
    """

    def __init__(self, sock, deadline: float, timeout: float):
        super().__init__()
        self._sock = sock
        # A SocketIO keeps the file descriptor open after the connection drops its reference,
        # as http.client expects of the file it reads responses from.
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline
        self._timeout = timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("transfer deadline reached")
        self._sock.settimeout(min(self._timeout, remaining))
        return self._raw.readinto(buf)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineSocketView:
    """What ``HTTPResponse.__init__`` needs of a socket (``makefile``), with a deadline."""

    def __init__(self, sock, deadline: float, timeout: float):
        self._args = (sock, deadline, timeout)

    def makefile(self, mode: str = "rb", *args, **kwargs):
        return io.BufferedReader(_DeadlineRaw(*self._args))


class _DeadlineResponse(http.client.HTTPResponse):
    """An HTTPResponse whose status line, headers and body must all arrive before a deadline."""

    def __init__(self, sock, debuglevel=0, method=None, url=None, *, deadline: float, timeout: float):
        super().__init__(_DeadlineSocketView(sock, deadline, timeout), debuglevel, method, url)


class _DeadlineConnectionMixin:
    """Connection that shares one deadline across connecting and reading the response."""

    def __init__(self, *args, deadline: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        self.response_class = functools.partial(_DeadlineResponse, deadline=deadline, timeout=self.timeout)

    def connect(self):
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("transfer deadline reached before connecting")
        # Connecting (and the TLS handshake, which CPython bounds as a whole by the socket
        # timeout) may use only what is left of the deadline.
        self.timeout = min(self.timeout, remaining)
        super().connect()
        if time.monotonic() > self._deadline:
            raise TimeoutError("transfer deadline reached while connecting")


class _DeadlineHTTPConnection(_DeadlineConnectionMixin, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnectionMixin, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPConnection, deadline=self._deadline), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float):
        super().__init__()
        self._deadline = deadline

    def https_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPSConnection, deadline=self._deadline), req,
                            context=self._context)


class _HttpOnlyRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows at most MAX_REDIRECTS redirects, and only to http/https URLs.

    urllib alone would follow a redirect to ftp://, which the CSV itself may not name.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        hops = getattr(req, "biam_redirects", 0) + 1
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            fp.close()
            raise DownloadError(R_REDIRECT, f"{req.full_url} redirects to {newurl!r}, not an http(s) URL",
                                transient=False)
        if hops > MAX_REDIRECTS:
            fp.close()
            raise DownloadError(R_REDIRECT, f"more than {MAX_REDIRECTS} redirects (the last to {newurl})",
                                transient=False)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.biam_redirects = hops
        return new


def _opener(deadline: float) -> urllib.request.OpenerDirector:
    """An opener for http/https only (no ftp, file or data handlers), bounded by ``deadline``."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                    _DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline),
                    _HttpOnlyRedirectHandler(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def fetch(url: str, timeout: float) -> bytes:
    """GET ``url`` -> body bytes; raises DownloadError (classified) on any failure.

    ``timeout`` bounds the whole attempt: connecting, every redirect, the status line, the
    headers and the body must all be done within ``timeout`` seconds of the start, so a
    server that trickles bytes cannot hold a worker longer than that.
    """
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    start = time.monotonic()
    deadline = start + timeout
    too_slow = f"the transfer did not finish within {timeout:g} s (--timeout bounds the whole transfer)"
    try:
        with _opener(deadline).open(req, timeout=timeout) as resp:
            if _REMOVED_MARKER in resp.geturl():
                raise DownloadError(R_REMOVED, f"redirected to {resp.geturl()}", transient=False)
            parts = []
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                parts.append(chunk)
                if time.monotonic() > deadline:
                    raise DownloadError(R_TIMEOUT, too_slow, transient=True)
            body = b"".join(parts)
            # read(n) returns short data at EOF instead of raising IncompleteRead, so a body
            # cut off by the server must be caught by comparing with Content-Length.
            expected = resp.headers.get("Content-Length")
            if expected is not None and expected.strip().isdigit() and int(expected) != len(body):
                raise DownloadError(R_CONNECTION, f"body ended after {len(body)} of {expected} bytes",
                                    transient=True)
            return body
    except urllib.error.HTTPError as exc:
        code = exc.code
        exc.close()
        if 300 <= code < 400:
            # urllib's own refusals: a redirect loop, or a scheme it will not follow (file:).
            raise DownloadError(R_REDIRECT, f"http {code}: {exc.reason}", transient=False) from exc
        transient = code >= 500 or code in (408, 429)
        retry_after = _retry_after(exc.headers) if transient else None
        raise DownloadError(f"http {code}", str(exc.reason), transient, retry_after) from exc
    except urllib.error.URLError as exc:
        inner = exc.reason
        if isinstance(inner, (TimeoutError, socket.timeout)):
            raise DownloadError(R_TIMEOUT, f"connect: {inner}; {too_slow}", transient=True) from exc
        if isinstance(inner, ssl.SSLCertVerificationError):
            raise DownloadError(R_SSL, str(inner), transient=False) from exc
        raise DownloadError(R_CONNECTION, str(inner), transient=True) from exc
    except (TimeoutError, socket.timeout) as exc:
        raise DownloadError(R_TIMEOUT, too_slow, transient=True) from exc
    except (http.client.HTTPException, ConnectionError) as exc:
        # IncompleteRead, RemoteDisconnected, resets: the server or network dropped us.
        raise DownloadError(R_CONNECTION, f"{type(exc).__name__}: {exc}", transient=True) from exc


def fetch_with_retries(url: str, timeout: float, retries: int, backoff: float,
                       rng: random.Random) -> tuple[bytes, int]:
    """``fetch`` with up to ``retries`` extra attempts for transient failures.

    Returns (body, attempts). Raises the last DownloadError, with ``attempts`` set on it.
    """
    attempt = 0
    while True:
        try:
            return fetch(url, timeout), attempt + 1
        except DownloadError as err:
            if not err.transient or attempt >= retries:
                err.attempts = attempt + 1
                raise
            delay = backoff_delay(attempt, backoff, rng)
            if err.retry_after is not None:
                delay = max(delay, min(err.retry_after, MAX_BACKOFF_S))
            time.sleep(delay)
            attempt += 1


# --------------------------------------------------------------------------- images


def target_size(width: int, height: int, short_side: int = SHORT_SIDE) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is ``short_side``, aspect ratio kept."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image has size {width}x{height}")
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_jpeg(data: bytes, resize: bool) -> bytes:
    """Image bytes -> RGB JPEG bytes, short side ``SHORT_SIDE`` when ``resize``.

    Without ``resize`` a JPEG is returned unchanged (its MD5 still matches the CSV) and other
    formats are re-encoded as JPEG at their own size. Raises DownloadError for undecodable data.
    """
    from PIL import Image, UnidentifiedImageError  # optional dependency, only needed here

    try:
        with Image.open(io.BytesIO(data)) as img:
            if not resize and img.format == "JPEG":
                img.load()  # decode fully so a truncated JPEG is caught here
                return data
            if resize:
                size = target_size(*img.size)
                # Let libjpeg decode at 1/2..1/8 scale when that still covers the target: far
                # less work for multi-megapixel originals. No-op for other formats.
                img.draft("RGB", size)
            img.load()
            rgb = img.convert("RGB")
            if resize:
                rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
            return out.getvalue()
    except UnidentifiedImageError as exc:
        raise DownloadError(R_NOT_IMAGE, f"{len(data)} bytes, starting {data[:16]!r}", False) from exc
    except Image.DecompressionBombError as exc:
        raise DownloadError(R_TOO_LARGE, str(exc), False) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow signals truncated or malformed image data with these.
        raise DownloadError(R_CORRUPT, f"{type(exc).__name__}: {exc}", False) from exc


# errno values of os.link on a filesystem that has no hard links.
_NO_HARDLINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


def _link_no_clobber(tmp: Path, path: Path) -> None:
    """Give the finished file ``tmp`` the name ``path`` unless ``path`` exists (FileExistsError)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARDLINKS:
            raise
        # No hard links here: a rename is the best left; it could replace a file that
        # appeared at ``path`` since it was checked a moment ago.
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_atomic(path: Path, data: bytes, replace: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    The final name therefore holds either the complete file or nothing; the temporary file is
    removed when anything fails. The file gets the permissions ``open()`` would give it
    (0666 less the umask, usually 0644). With ``replace`` False a file that is at ``path``
    (say, one that appeared while the data was downloaded) is kept and FileExistsError raised.
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
        try:
            # O_EXCL: never write into a file that is already there; mode 0o666 lets the
            # umask decide, as for any file the user creates (mkstemp would force 0600).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue  # 48 random bits collided with a stray .part file: draw another name
        break
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            # fsync before the rename so that after a crash the name never points at lost data.
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # the rename already happened or the file never appeared: nothing to clean
        raise


# States of a file already at an image's final name (see ``check_present``).
PRESENT = "present"    # a complete image: keep it, request nothing
ABSENT = "absent"      # nothing there: download
BROKEN = "broken"      # known incomplete or not an image: download and replace it
BLOCKED = "blocked"    # something we must not replace (a folder, an unreadable file)


def check_present(path: Path, job: Job, resize: bool) -> tuple[str, str]:
    """Judge the file already at ``path`` for ``job`` -> (state, why) with a state above.

    With ``--no-resize`` a JPEG original is stored byte for byte, so when the CSV gives the
    original's MD5 (and size) a file with exactly that content is complete without decoding,
    and a file of the original's size with another MD5 is broken. Otherwise (resized files
    never match the original's MD5) the file must decode completely with Pillow: a 0-byte,
    truncated or non-image file is broken. A file that decodes is kept even if it is not the
    image the CSV names: the downloader cannot tell it did not write it.
    """
    from PIL import Image, UnidentifiedImageError  # optional dependency, only needed here

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ABSENT, ""
    except OSError as exc:
        return BLOCKED, f"{path}: cannot check the file already there ({exc}); it is left as is"
    if not stat.S_ISREG(st.st_mode):
        return BLOCKED, f"{path}: exists and is not a regular file; it is left as is"
    if st.st_size == 0:
        return BROKEN, "the file already there had 0 bytes"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return BLOCKED, f"{path}: cannot read the file already there ({exc}); it is left as is"
    if not resize and job.md5 is not None and (job.size is None or len(data) == job.size):
        digest = hashlib.md5(data).digest()
        if digest == job.md5:
            return PRESENT, ""
        if job.size is not None:
            return BROKEN, (f"the file already there has the original's {len(data)} bytes but MD5 "
                            f"{base64.b64encode(digest).decode()}, {MD5_COLUMN} says "
                            f"{base64.b64encode(job.md5).decode()}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except UnidentifiedImageError:
        return BROKEN, f"the file already there ({len(data)} bytes) is not an image"
    except Image.DecompressionBombError:
        return PRESENT, ""  # a complete header of a huge image: not known to be broken, keep it
    except (OSError, SyntaxError, ValueError) as exc:
        return BROKEN, f"the file already there ({len(data)} bytes) is incomplete or corrupt ({exc})"
    return PRESENT, ""


def process(job: Job, out_dir: Path, *, timeout: float, retries: int, backoff: float,
            resize: bool, seed: Optional[int] = None) -> Outcome:
    """Check, or else download, convert and store one image -> its Outcome (never raises DownloadError).

    A complete file already at ``<ImageID>.jpg`` is kept and nothing is requested
    (``present``); a broken one is downloaded again and replaced (``replaced`` says why).
    """
    path = out_dir / f"{job.image_id}.jpg"
    state, why = check_present(path, job, resize)
    if state == PRESENT:
        return Outcome(job, True, present=True)
    if state == BLOCKED:
        return Outcome(job, False, R_WRITE, why)
    rng = random.Random(seed)
    attempts = 0
    try:
        data, attempts = fetch_with_retries(job.url, timeout, retries, backoff, rng)
        if job.md5 is not None:
            got = hashlib.md5(data).digest()
            if got != job.md5:
                raise DownloadError(
                    R_CHECKSUM,
                    f"MD5 of {len(data)} bytes is {base64.b64encode(got).decode()}, "
                    f"{MD5_COLUMN} says {base64.b64encode(job.md5).decode()}",
                    False,
                )
        jpeg = to_jpeg(data, resize)
        try:
            # Only a file judged broken above may be replaced.
            write_atomic(path, jpeg, replace=state == BROKEN)
        except FileExistsError as exc:
            # Something else put a file there during the download: judge it, never replace it.
            now, now_why = check_present(path, job, resize)
            if now == PRESENT:
                return Outcome(job, True, attempts=attempts, present=True)
            raise DownloadError(R_WRITE, f"{path}: a file appeared there during the download "
                                         f"({now_why}); it is left as is", False) from exc
        except OSError as exc:
            raise DownloadError(R_WRITE, f"{path}: {exc}", False) from exc
    except DownloadError as err:
        detail = err.detail if state == ABSENT else f"{err.detail} ({why}; it is left as is)"
        return Outcome(job, False, err.reason, detail, getattr(err, "attempts", attempts) or attempts)
    return Outcome(job, True, attempts=attempts, replaced=why if state == BROKEN else "")


# --------------------------------------------------------------------------- report


def write_report(path: Path, failures: list[Outcome], csv_error: str = "") -> None:
    """Write the failure report CSV (header ``image_id,url,reason,detail``) atomically.

    ``csv_error``, when given, adds a first row with reason ``unreadable csv``: the run
    stopped because the CSV could not be read (the detail names the file and line).
    """
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(REPORT_FIELDS)
    if csv_error:
        writer.writerow(("", "", R_CSV, csv_error))
    for f in sorted(failures, key=lambda o: o.job.line):
        writer.writerow((f.job.image_id, f.job.url, f.reason, f.detail))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue().encode("utf-8"))


def check_report_path(path: Path) -> Optional[str]:
    """None if ``path`` may be (re)written as the report, else why not.

    Only a file that starts with the report's own header line is replaced: any other file at
    that name was not written by this script and is left alone.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: cannot check the existing report ({exc})"
    if not stat.S_ISREG(st.st_mode):
        return f"{path}: exists and is not a file; choose another --report"
    try:
        with open(path, "rb") as fh:
            first = fh.readline(200)
    except OSError as exc:
        return f"{path}: cannot read the existing report ({exc})"
    if first.rstrip(b"\r\n") != ",".join(REPORT_FIELDS).encode():
        return (f"{path}: exists and is not a failure report of this script (its first line is not "
                f"'{','.join(REPORT_FIELDS)}'); it is left as is: move it or choose another --report")
    return None


def summarize(n_rows: int, n_done: int, n_skipped: int, failures: list[Outcome], report: Path,
              n_replaced: int = 0) -> str:
    """Human summary: counts and failures grouped by reason, most frequent first."""
    lines = [
        f"rows: {n_rows}  downloaded: {n_done}  already present: {n_skipped}  failed: {len(failures)}"
    ]
    if n_replaced:
        lines.append(f"incomplete or corrupt files found and downloaded again: {n_replaced}")
    if failures:
        lines.append("failures by reason:")
        for reason, n in collections.Counter(f.reason for f in failures).most_common():
            lines.append(f"  {reason}: {n}")
    lines.append(f"report: {report}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (its help text is the reference for the options)."""
    p = argparse.ArgumentParser(
        prog="download_imgs.py",
        description=(
            "Download the Open Images (2018_04) images listed in an image CSV in parallel, "
            "check their MD5, resize them so the short side is 256 and save them as "
            "<ImageID>.jpg. An image already in --out is kept and not requested if it is "
            "complete (it decodes fully; with --no-resize, equal to OriginalSize/OriginalMD5 "
            "when the CSV gives them); a 0-byte, truncated or non-image file there is "
            "downloaded again and replaced. So the command can be rerun to resume. Failures "
            "are summarised and written to a report."
        ),
        epilog=(
            "Exit status: 0 all images present, 1 some images failed (see the report), "
            "2 usage error or unreadable CSV (missing, a folder, not UTF-8, malformed; the "
            "message and the report name the file and line), 130 interrupted."
        ),
    )
    p.add_argument("--csv", required=True, type=Path,
                   help="image list CSV, UTF-8 (ImageID, URL column, OriginalMD5, OriginalSize)")
    p.add_argument("--out", required=True, type=Path, help="output folder for <ImageID>.jpg (created if needed)")
    p.add_argument("--workers", type=int, default=16, help="parallel downloads (default: 16)")
    p.add_argument("--retries", type=int, default=3,
                   help="extra attempts after a transient failure: timeout, connection error, "
                        "HTTP 5xx, 408, 429; never for 404 or other 4xx (default: 3)")
    p.add_argument("--backoff", type=float, default=1.0,
                   help="base delay in seconds; retry n waits about base*2^n, with jitter (default: 1.0)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds one attempt at one file may take in all: connecting, redirects "
                        f"(at most {MAX_REDIRECTS}, http/https only), headers and body; a server that trickles "
                        "bytes is cut off at that point. Each retry gets a new TIMEOUT (default: 30)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N rows of the CSV")
    p.add_argument("--url-column", default="OriginalURL", choices=URL_COLUMNS,
                   help="column holding the URL (default: OriginalURL). OriginalMD5 describes the "
                        "original file, so the checksum is only checked with OriginalURL")
    p.add_argument("--no-checksum", action="store_true",
                   help="do not compare the MD5 of the downloaded bytes with OriginalMD5 "
                        "(rows with an empty OriginalMD5 are never checked)")
    p.add_argument("--no-resize", action="store_true",
                   help="keep the original size: JPEGs are stored byte for byte, other formats re-encoded as JPEG")
    p.add_argument("--report", type=Path, default=None,
                   help=f"failure report CSV (default: OUT/{REPORT_NAME}), rewritten on every run; a "
                        "file there that is not such a report is left alone and the run stops (exit 2)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run the downloader with ``argv`` (default ``sys.argv[1:]``) -> exit status (0, 1, 2, 130)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.retries < 0:
        parser.error("--retries must be 0 or more")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.backoff < 0:
        parser.error("--backoff must be 0 or more")
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must be 0 or more")

    from tqdm import tqdm  # optional dependency, only needed when running

    use_md5 = not args.no_checksum and args.url_column == "OriginalURL"
    if not args.no_checksum and args.url_column != "OriginalURL":
        print(f"note: {MD5_COLUMN} is the MD5 of the original file, not of {args.url_column}; "
              "checksums are not checked", file=sys.stderr)
    out_dir: Path = args.out
    report = args.report if args.report is not None else out_dir / REPORT_NAME
    refusal = check_report_path(report)
    if refusal is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: {out_dir}: cannot create the output folder ({exc})", file=sys.stderr)
        return 2

    def csv_failed(exc: CsvFormatError, failures: list[Outcome], counts=(0, 0, 0, 0)) -> int:
        """Report an unreadable CSV: message, report with the reason, exit status 2."""
        print(f"error: {exc}", file=sys.stderr)
        try:
            write_report(report, failures, csv_error=str(exc))
        except OSError as err:
            print(f"error: {report}: cannot write the failure report ({err})", file=sys.stderr)
        n_rows, n_done, n_skipped, n_replaced = counts
        print(summarize(n_rows, n_done, n_skipped, failures, report, n_replaced))
        return 2

    try:
        rows = iter_rows(args.csv, args.url_column, use_md5, args.limit)
        first = next(rows, None)  # reads the header now, so a bad CSV fails before any work
        # Reads the whole file: a bad byte or line anywhere stops the run before any request.
        n_rows = count_rows(args.csv, args.limit)
    except CsvFormatError as exc:
        return csv_failed(exc, [])

    failures: list[Outcome] = []
    n_done = n_skipped = n_replaced = 0
    interrupted = False
    csv_error: Optional[CsvFormatError] = None
    bar = tqdm(total=n_rows, unit="img", desc="download", dynamic_ncols=True)

    def record(outcome: Outcome) -> None:
        nonlocal n_done, n_skipped, n_replaced
        if outcome.present:
            n_skipped += 1
        elif outcome.ok:
            n_done += 1
            n_replaced += bool(outcome.replaced)
        else:
            failures.append(outcome)
        bar.update(1)
        bar.set_postfix(ok=n_done, skipped=n_skipped, failed=len(failures), refresh=False)

    def all_rows():
        if first is not None:
            yield first
        yield from rows

    # A bounded window of futures: the train CSV has ~1.7M rows, too many to submit at once.
    window = max(4 * args.workers, 16)
    pool = cf.ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="download")
    pending: set[cf.Future] = set()
    try:
        try:
            for item in all_rows():
                if isinstance(item, Outcome):
                    record(item)
                    continue
                # Every job goes to a worker, also when its file exists: judging whether that
                # file is complete means decoding it, which is worth doing in parallel.
                pending.add(pool.submit(process, item, out_dir, timeout=args.timeout, retries=args.retries,
                                        backoff=args.backoff, resize=not args.no_resize))
                if len(pending) >= window:
                    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        record(fut.result())
        except CsvFormatError as exc:
            # The file changed under us after it was counted: stop submitting, finish the rest.
            csv_error = exc
        for fut in cf.as_completed(pending):
            record(fut.result())
        pending = set()
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: finishing the downloads in flight", file=sys.stderr)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if interrupted:
        for fut in pending:
            if fut.done() and not fut.cancelled():
                record(fut.result())
    if csv_error is not None:
        return csv_failed(csv_error, failures, (n_rows, n_done, n_skipped, n_replaced))

    try:
        write_report(report, failures)
    except OSError as exc:
        print(f"error: {report}: cannot write the failure report ({exc})", file=sys.stderr)
        print(summarize(n_rows, n_done, n_skipped, failures, report, n_replaced))
        return 1
    print(summarize(n_rows, n_done, n_skipped, failures, report, n_replaced))
    if interrupted:
        return 130
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
