"""Where dataset files live, how missing ones are downloaded, and the two errors of this layer.

Every dataset reads its files under one data directory, in the layout of its own ecosystem
(torchvision's for images, aeon's for UEA ``.ts`` files, FFJORD's for the MAF bundle), so
existing downloads are reused. A missing file is downloaded only when ``download=True``:

* with ``urllib.request.urlopen`` and a timeout of a few seconds per network operation, so that a
  machine without a network fails within seconds;
* into a temporary file in the destination folder, checked against its md5 checksum, and moved
  into place with ``os.replace`` (a crash never leaves a half-written file under the real name);
* with a tqdm progress bar when tqdm is installed and stderr is a terminal.

When a file is missing and cannot be downloaded, :class:`DataUnavailable` names the file, the
address it comes from and the offline datasets to use instead. A file that is on disk but
truncated or malformed raises :class:`DataCorrupt` naming the file.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Environment variable naming the data directory.
ENV_VAR = "NODEOPT_DATA"
#: Seconds a single network operation (connect, one read) may take.
TIMEOUT_S = 5.0
#: Datasets that need no download, by task: what the error messages point to.
OFFLINE = {
    "image": ("digits",),
    "timeseries": ("japanese-vowels",),
    "density": ("8gaussians", "moons", "checkerboard", "pinwheel", "2spirals", "rings", "breast-cancer"),
}
_CHUNK = 1 << 20


class DataUnavailable(RuntimeError):
    """A dataset's file is not on disk and could not be downloaded (or ``download=False``)."""


class DataCorrupt(ValueError):
    """A dataset's file is on disk but truncated, malformed or fails its checksum."""


def data_dir(path: Optional[PathLike] = None) -> Path:
    """The data directory: ``path`` if given, else ``$NODEOPT_DATA``, else ``~/.cache/nodeopt``.

    The directory is not created here; downloads create what they need.
    """
    if path is None:
        path = os.environ.get(ENV_VAR) or Path("~") / ".cache" / "nodeopt"
    return Path(path).expanduser().absolute()


def offline_hint() -> str:
    """One sentence listing the datasets that work without a network."""
    parts = [f"{task}: {', '.join(names)}" for task, names in OFFLINE.items()]
    return "Offline datasets that need no download: " + "; ".join(parts) + "."


def unavailable(dataset: str, path: Path, urls: Sequence[str], reason: str) -> DataUnavailable:
    """The error for a missing file: what is needed, where from, and what to use instead."""
    where = " or ".join(urls) if urls else "(no public address; see the dataset's docstring)"
    return DataUnavailable(
        f"Dataset {dataset!r} needs the file {path}, which is not on disk, and {reason}. "
        f"Download it from {where} and put it at that path (or point data_dir= / ${ENV_VAR} at a "
        f"folder that holds it). {offline_hint()}")


def corrupt(path: PathLike, reason: str) -> DataCorrupt:
    """The error for a file that is on disk but cannot be used."""
    return DataCorrupt(f"File {path} is truncated or corrupt: {reason}. Delete it and download it again.")


def md5sum(path: PathLike) -> str:
    """Hex md5 digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require(path: Path, urls: Sequence[str], md5: Optional[str], *, dataset: str, download: bool,
            timeout: float = TIMEOUT_S) -> Path:
    """Return ``path`` if it exists; otherwise download it (``download=True``) or raise.

    Raises:
        DataUnavailable: the file is missing and ``download`` is false or every address failed.
        DataCorrupt: the downloaded bytes do not match ``md5``.
    """
    if path.is_file():
        return path
    if not download:
        raise unavailable(dataset, path, urls, "download=False was given")
    return fetch(path, urls, md5, dataset=dataset, timeout=timeout)


def fetch(path: Path, urls: Sequence[str], md5: Optional[str], *, dataset: str,
          timeout: float = TIMEOUT_S) -> Path:
    """Download the first address that answers into ``path``, atomically, checking ``md5``."""
    failures = []
    for url in urls:
        try:
            _download(url, path, md5, timeout)
            return path
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError, timeouts: OSErrors
            if isinstance(err, DataCorrupt):
                raise
            logger.warning("download of %s failed: %s", url, err)
            failures.append(f"{type(err).__name__}: {err}")
    raise unavailable(dataset, path, urls, "downloading it failed (" + "; ".join(failures) + ")") from None


def _download(url: str, path: Path, md5: Optional[str], timeout: float) -> None:
    """Stream ``url`` into a temporary file next to ``path``, verify, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) if hasattr(response, "headers") else 0
            with _progress(total, path.name) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if md5 is not None and digest.hexdigest() != md5:
            raise corrupt(path, f"the download from {url} has md5 {digest.hexdigest()}, not the published {md5}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def _progress(total: int, desc: str):
    """A tqdm bar when tqdm is importable and stderr is a terminal, else a silent stand-in."""
    if not sys.stderr.isatty():
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total or None, unit="B", unit_scale=True, desc=desc)


def zenodo_file(record: int, key: str, *, dataset: str, path: Path,
                timeout: float = TIMEOUT_S) -> tuple[str, str]:
    """Address and md5 of file ``key`` of Zenodo record ``record``, read from Zenodo's metadata.

    Zenodo publishes each file's md5 in its record (``"checksum": "md5:..."``); the download is
    checked against it. Raises :class:`DataUnavailable` when the metadata cannot be read.
    """
    api = f"https://zenodo.org/api/records/{record}"
    static = f"https://zenodo.org/records/{record}/files/{key}?download=1"
    try:
        with urllib.request.urlopen(api, timeout=timeout) as response:
            meta = json.loads(response.read().decode("utf-8"))
        entry = next(f for f in meta.get("files", []) if (f.get("key") or f.get("filename")) == key)
    except (OSError, http.client.HTTPException, ValueError, StopIteration) as err:
        reason = f"reading Zenodo record {record}'s file list failed ({type(err).__name__}: {err})"
        raise unavailable(dataset, path, [static], reason) from None
    checksum = str(entry.get("checksum", ""))
    md5 = checksum.split(":", 1)[1] if checksum.startswith("md5:") else None
    links = entry.get("links", {})
    return links.get("self") or links.get("download") or static, md5


def extract_members(archive: Path, root: Path, members: Iterable[str], strip: str = "") -> None:
    """Extract the named members of a tar archive under ``root``, removing the prefix ``strip``.

    Only regular files whose names are listed are written, each atomically; names that would
    leave ``root`` are refused.
    """
    wanted = set(members)
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.name not in wanted or not member.isfile():
                    continue
                target = (root / member.name[len(strip):]).resolve()
                if root.resolve() not in target.parents:
                    raise corrupt(archive, f"member {member.name!r} would leave {root}")
                _write_member(tar, member, target)
                wanted.discard(member.name)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise corrupt(archive, f"{type(err).__name__}: {err}") from None
    if wanted:
        raise corrupt(archive, f"members {sorted(wanted)} are missing")


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            source = tar.extractfile(member)
            for chunk in iter(lambda: source.read(_CHUNK), b""):
                out.write(chunk)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def optional(module: str, package: str):
    """Import an optional dependency, or raise an ImportError naming the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"This dataset needs the optional package {package!r}: "
                          f"pip install {package} (or pip install 'nodeopt[data]').") from None
