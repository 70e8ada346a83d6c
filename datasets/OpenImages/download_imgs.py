#!/usr/bin/env python
"""Download Open Images (2018_04) images listed in an image CSV, in parallel, resumably.

Input: an Open Images image list CSV (for example ``train-images-with-labels-with-rotation.csv``
or ``test-images-with-rotation.csv`` of the 2018_04 release) with at least the columns
``ImageID`` and the chosen URL column (``OriginalURL`` by default, or ``Thumbnail300KURL``);
``OriginalMD5`` (base64 of the 16-byte MD5, as in the official CSVs) is used for the checksum
when present. A UTF-8 byte-order mark at the start of the file is accepted.

Output, in ``--out``: ``<ImageID>.jpg`` for every image that downloaded and checked out
(RGB JPEG, short side 256 unless ``--no-resize``), and a failure report
(``download_failures.csv`` unless ``--report``) with one row per image that failed:
``image_id, url, reason, detail``. The report is rewritten on every run, so it always
describes the last run; it has only a header when nothing failed.

Exit status: 0 when every listed image is present at the end, 1 when at least one image failed
(see the report), 2 for a usage error or an unreadable / malformed CSV header, 130 when
interrupted.

Resuming: an image whose ``<ImageID>.jpg`` already exists is not requested again. Files are
written under a temporary name and renamed, so a final name always holds a complete image.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import concurrent.futures as cf
import csv
import hashlib
import http.client
import io
import os
import random
import re
import socket
import ssl
import sys
import tempfile
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
USER_AGENT = "BiAM-rebuilt-openimages-downloader/1.0 (+urllib)"
MAX_BACKOFF_S = 60.0
CHUNK = 1 << 16
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


class CsvFormatError(ValueError):
    """The CSV cannot be used at all (missing file, missing column)."""


@dataclass(frozen=True)
class Job:
    """One image to fetch: its id, URL, expected raw MD5 (None: no check) and CSV line."""

    image_id: str
    url: str
    md5: Optional[bytes]
    line: int


@dataclass
class Outcome:
    """Result of one job: ``ok`` or a failure ``reason`` with ``detail``; ``attempts`` made."""

    job: Job
    ok: bool
    reason: str = ""
    detail: str = ""
    attempts: int = 0


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
    """Open ``path`` as text; ``utf-8-sig`` drops the byte-order mark some releases start with."""
    try:
        return open(path, "r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise CsvFormatError(f"{path}: cannot open the image CSV ({exc})") from exc


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
    """Number of data rows of the CSV at ``path`` (at most ``limit``), for the progress bar."""
    with _open_csv(path) as fh:
        reader = csv.reader(fh)
        next(reader, None)
        n = 0
        for row in reader:
            if not row:
                continue  # DictReader skips blank lines too; keep the counts equal
            n += 1
            if limit is not None and n >= limit:
                break
    return n


def iter_rows(path: Path, url_column: str, use_md5: bool, limit: Optional[int]) -> Iterator["Job | Outcome"]:
    """Stream the CSV at ``path``: a ``Job`` per usable row, a failed ``Outcome`` per bad row.

    ``use_md5`` False ignores the MD5 column. At most ``limit`` data rows are read.
    Raises CsvFormatError when the file or a needed column is missing.
    """
    with _open_csv(path) as fh:
        reader = csv.DictReader(fh)
        has_md5 = _check_header(path, reader.fieldnames, url_column)
        seen: set[str] = set()
        for n, row in enumerate(reader):
            if limit is not None and n >= limit:
                break
            line = reader.line_num
            image_id = (row.get("ImageID") or "").strip()
            url = (row.get(url_column) or "").strip()
            where = f"{path}: line {line}, image {image_id or '<empty>'}"

            def bad(reason: str, detail: str) -> Outcome:
                job = Job(image_id or f"<line {line}>", url, None, line)
                return Outcome(job, False, reason, f"{where}: {detail}")

            if None in row or None in row.values():
                # DictReader files extra fields under None and fills missing ones with None.
                n_fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or ())
                yield bad(R_BAD_ROW, f"row has {n_fields} fields, header has {len(reader.fieldnames)}")
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
            if image_id in seen:
                yield bad(R_DUPLICATE, "field ImageID repeats an earlier row; the earlier row is used")
                continue
            seen.add(image_id)
            yield Job(image_id, url, md5, line)


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


def fetch(url: str, timeout: float) -> bytes:
    """GET ``url`` -> body bytes; raises DownloadError (classified) on any failure.

    ``timeout`` bounds each socket operation and also the whole transfer, so a server that
    trickles bytes cannot hold a worker forever.
    """
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if _REMOVED_MARKER in resp.geturl():
                raise DownloadError(R_REMOVED, f"redirected to {resp.geturl()}", transient=False)
            parts = []
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                parts.append(chunk)
                if time.monotonic() - start > timeout:
                    raise DownloadError(R_TIMEOUT, f"transfer took longer than {timeout:g} s", transient=True)
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
        transient = code >= 500 or code in (408, 429)
        retry_after = _retry_after(exc.headers) if transient else None
        exc.close()
        raise DownloadError(f"http {code}", str(exc.reason), transient, retry_after) from exc
    except urllib.error.URLError as exc:
        inner = exc.reason
        if isinstance(inner, (TimeoutError, socket.timeout)):
            raise DownloadError(R_TIMEOUT, f"connect: {inner}", transient=True) from exc
        if isinstance(inner, ssl.SSLCertVerificationError):
            raise DownloadError(R_SSL, str(inner), transient=False) from exc
        raise DownloadError(R_CONNECTION, str(inner), transient=True) from exc
    except (TimeoutError, socket.timeout) as exc:
        raise DownloadError(R_TIMEOUT, f"no data within {timeout:g} s", transient=True) from exc
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


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    The final name therefore holds either the complete file or nothing; the temporary file is
    removed when anything fails.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            # fsync before the rename so that after a crash the name never points at lost data.
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # the rename already happened or the file never appeared: nothing to clean
        raise


def process(job: Job, out_dir: Path, *, timeout: float, retries: int, backoff: float,
            resize: bool, seed: Optional[int] = None) -> Outcome:
    """Download, check, convert and store one image -> its Outcome (never raises DownloadError)."""
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
            write_atomic(out_dir / f"{job.image_id}.jpg", jpeg)
        except OSError as exc:
            raise DownloadError(R_WRITE, f"{out_dir / (job.image_id + '.jpg')}: {exc}", False) from exc
    except DownloadError as err:
        return Outcome(job, False, err.reason, err.detail, getattr(err, "attempts", attempts) or attempts)
    return Outcome(job, True, attempts=attempts)


# --------------------------------------------------------------------------- report


def write_report(path: Path, failures: list[Outcome]) -> None:
    """Write the failure report CSV (header ``image_id,url,reason,detail``) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(REPORT_FIELDS)
    for f in sorted(failures, key=lambda o: o.job.line):
        writer.writerow((f.job.image_id, f.job.url, f.reason, f.detail))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue().encode("utf-8"))


def summarize(n_rows: int, n_done: int, n_skipped: int, failures: list[Outcome], report: Path) -> str:
    """Human summary: counts and failures grouped by reason, most frequent first."""
    lines = [
        f"rows: {n_rows}  downloaded: {n_done}  already present: {n_skipped}  failed: {len(failures)}"
    ]
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
            "<ImageID>.jpg. Images already present in --out are skipped, so the command can "
            "be rerun to resume. Failures are summarised and written to a report."
        ),
        epilog=(
            "Exit status: 0 all images present, 1 some images failed (see the report), "
            "2 usage error or unusable CSV, 130 interrupted."
        ),
    )
    p.add_argument("--csv", required=True, type=Path, help="image list CSV (ImageID, URL column, OriginalMD5)")
    p.add_argument("--out", required=True, type=Path, help="output folder for <ImageID>.jpg (created if needed)")
    p.add_argument("--workers", type=int, default=16, help="parallel downloads (default: 16)")
    p.add_argument("--retries", type=int, default=3,
                   help="extra attempts after a transient failure: timeout, connection error, "
                        "HTTP 5xx, 408, 429; never for 404 or other 4xx (default: 3)")
    p.add_argument("--backoff", type=float, default=1.0,
                   help="base delay in seconds; retry n waits about base*2^n, with jitter (default: 1.0)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="timeout in seconds for connecting and for each read; the whole transfer of one "
                        "attempt is also stopped once it has taken longer (default: 30)")
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
                   help=f"failure report CSV (default: OUT/{REPORT_NAME})")
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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = iter_rows(args.csv, args.url_column, use_md5, args.limit)
        first = next(rows, None)  # reads the header now, so a bad CSV fails before any work
        n_rows = count_rows(args.csv, args.limit)
    except CsvFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {out_dir}: cannot create the output folder ({exc})", file=sys.stderr)
        return 2

    failures: list[Outcome] = []
    n_done = n_skipped = 0
    interrupted = False
    bar = tqdm(total=n_rows, unit="img", desc="download", dynamic_ncols=True)

    def record(outcome: Outcome) -> None:
        nonlocal n_done
        if outcome.ok:
            n_done += 1
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
        for item in all_rows():
            if isinstance(item, Outcome):
                record(item)
                continue
            if (out_dir / f"{item.image_id}.jpg").is_file():
                # Files only appear under their final name once complete, so presence is enough.
                n_skipped += 1
                bar.update(1)
                continue
            pending.add(pool.submit(process, item, out_dir, timeout=args.timeout, retries=args.retries,
                                    backoff=args.backoff, resize=not args.no_resize))
            if len(pending) >= window:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    record(fut.result())
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

    try:
        write_report(report, failures)
    except OSError as exc:
        print(f"error: {report}: cannot write the failure report ({exc})", file=sys.stderr)
        print(summarize(n_rows, n_done, n_skipped, failures, report))
        return 1
    print(summarize(n_rows, n_done, n_skipped, failures, report))
    if interrupted:
        return 130
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
