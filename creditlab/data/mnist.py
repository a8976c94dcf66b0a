"""Finding, downloading and verifying the real MNIST files.

Each of the four files is looked for, raw or gzipped, in `data_dir` (if given), then
`$CREDITLAB_DATA/mnist` (if set), then the cache `$XDG_CACHE_HOME/creditlab/mnist` (default
`~/.cache/creditlab/mnist`). A file found nowhere is downloaded into the cache from the mirrors
(`$CREDITLAB_MNIST_MIRRORS`, comma-separated base URLs, overrides the built-in list; set it empty
to never download). Every file, found or downloaded, must match the SHA-256 of the decoded
contents, so a result on "mnist" always means the same data.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from http.client import HTTPException
from pathlib import Path

from creditlab.data.idx import (
    FILE_NAMES,
    IdxFiles,
    check_idx_files,
    find_idx_file,
    parse_idx,
    read_idx_bytes,
)
from creditlab.errors import DataError
from creditlab.progress import bar as progress_bar

# SHA-256 and size of each file's decoded (gunzipped) contents.
CHECKSUMS = {
    "train-images-idx3-ubyte": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        47040016,
    ),
    "train-labels-idx1-ubyte": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        60008,
    ),
    "t10k-images-idx3-ubyte": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        7840016,
    ),
    "t10k-labels-idx1-ubyte": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        10008,
    ),
}

DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRRORS_ENV = "CREDITLAB_MNIST_MIRRORS"
DATA_ENV = "CREDITLAB_DATA"
TIMEOUT_S = 60


def cache_dir() -> Path:
    """Where downloads go: $XDG_CACHE_HOME/creditlab/mnist, by default ~/.cache/creditlab/mnist."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "creditlab" / "mnist"


def search_dirs(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The folders searched for each file, in order; the cache is always last."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]).expanduser() / "mnist")
    dirs.append(cache_dir())
    return dirs


def mirrors() -> list[str]:
    """Base URLs to download from, in order of preference."""
    value = os.environ.get(MIRRORS_ENV)
    if value is None:
        return list(DEFAULT_MIRRORS)
    return [url.strip() for url in value.split(",") if url.strip()]


def contents_problem(name: str, data: bytes) -> str | None:
    """What is wrong with decoded contents of MNIST file `name`, or None if they match."""
    want_hash, want_size = CHECKSUMS[name]
    if len(data) != want_size:
        return f"MNIST {name} should decode to {want_size} bytes, got {len(data)}"
    got = hashlib.sha256(data).hexdigest()
    if got != want_hash:
        return f"SHA-256 of the decoded contents is {got}, expected {want_hash} for MNIST {name}"
    return None


def _download_once(url: str, dest: Path, name: str, progress: bool) -> bytes:
    """Download `url` (a .gz) to `dest` atomically; return the verified decoded contents.

    The bytes go to a temporary file in the cache folder itself, so the final os.replace is
    atomic: readers see either no file or a complete, verified one, never a partial or bad one,
    and a good file already at `dest` is only ever replaced by another good one.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp,
        ):
            total = resp.headers.get("Content-Length")
            with progress_bar(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name,
                disable=not progress,
            ) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), 0o644)  # mkstemp makes it 0600; a cache should be readable
        try:
            data = gzip.decompress(tmp.read_bytes())
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"the download is not a valid gzip file ({e})") from e
        if problem := contents_problem(name, data):
            raise DataError(f"bad download: {problem}")
        os.replace(tmp, dest)
        return data
    finally:
        tmp.unlink(missing_ok=True)  # after a failure (or interrupt): never leave debris behind


def download(name: str, dirs: list[Path], progress: bool) -> tuple[Path, bytes]:
    """Fetch `name` into the cache from the first mirror that serves a verified copy."""
    cache = cache_dir()
    dest = cache / f"{name}.gz"
    urls = mirrors()
    errors = []
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        errors.append(f"cannot create the cache folder {cache}: {e.strerror or e}")
        urls = []
    for base in urls:
        url = base.rstrip("/") + f"/{name}.gz"
        try:
            return dest, _download_once(url, dest, name, progress)
        except (OSError, ValueError, HTTPException, DataError) as e:
            # URLError is an OSError; ValueError = malformed URL. Try the next mirror.
            errors.append(f"{url}: {e}")
    raise DataError(_not_found_message(name, dirs, urls, errors))


def _not_found_message(name: str, dirs: list[Path], urls: list[str], errors: list[str]) -> str:
    lines = [
        f"MNIST file {name} was not found and could not be downloaded.",
        f"Put the four MNIST files ({', '.join(FILE_NAMES)}; raw or .gz) in one of:",
    ]
    lines += [f"  {d}" for d in dirs]
    if not os.environ.get(DATA_ENV):
        lines.append(f"  (or set ${DATA_ENV} and use ${DATA_ENV}/mnist)")
    lines.append("They can be downloaded from any of these base URLs:")
    lines += [f"  {u}" for u in (urls or DEFAULT_MIRRORS)]
    if errors:
        lines.append("Download errors:")
        lines += [f"  {e}" for e in errors]
    else:
        lines.append(f"(No download was tried: ${MIRRORS_ENV} is set but empty.)")
    return "\n".join(lines)


def load_mnist_files(data_dir: str | os.PathLike[str] | None, progress: bool) -> IdxFiles:
    """Locate (or download), verify and parse the four MNIST files."""
    dirs = search_dirs(data_dir)
    files: IdxFiles = {}
    for name in FILE_NAMES:
        path = next((p for d in dirs if (p := find_idx_file(d, name)) is not None), None)
        if path is None:
            path, data = download(name, dirs, progress)
        else:
            # A user's own file is checked but never "repaired": they decide what to do.
            data = read_idx_bytes(path)
            if problem := contents_problem(name, data):
                raise DataError(
                    f"{path}: {problem} (truncated, corrupt or not MNIST); replace the file, "
                    "or delete it to have creditlab download it again"
                )
        files[name] = (path, parse_idx(data, path))
    check_idx_files(files)
    return files
