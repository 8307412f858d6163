"""Where dataset files live, how they are written and downloaded, and the two errors of this layer.

Every dataset reads its files under one data directory, in the layout of its own ecosystem
(torchvision's for images, aeon's for UEA ``.ts`` files, FFJORD's for the MAF bundle), so
existing downloads are reused. What each dataset needs is described once, in
:mod:`nodeopt.data.resources`; this module holds the mechanics underneath:

* :func:`atomic_write`, the one way a file is put in place: the bytes go to a temporary file in
  the destination folder, are flushed to disk (``fsync``) and moved over the real name with
  ``os.replace`` only when the ``with`` block succeeds; any failure removes the temporary file.
  A crash never leaves a half-written file under the real name. The run directory uses it too.
* :func:`fetch`, a download with ``urllib.request.urlopen`` and a timeout of a few seconds per
  network operation (a machine without a network fails within seconds), streamed through
  :func:`atomic_write` and checked against its md5 before it is moved into place; a tqdm
  progress bar when tqdm is installed and stderr is a terminal.
* :func:`extract_members`, the same for files taken out of a tar archive.

When a file is missing and cannot be downloaded, :class:`DataUnavailable` names the file, the
address it comes from and the offline datasets to use instead. A file that is on disk but
truncated, malformed or not the published one raises :class:`DataCorrupt` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import secrets
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import IO, Iterator, Mapping, Optional, Sequence, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Environment variable naming the data directory.
ENV_VAR = "NODEOPT_DATA"
#: Seconds a single network operation (connect, one read) may take.
TIMEOUT_S = 5.0
_CHUNK = 1 << 20
_WRITE_MODES = {"wb": "xb", "w": "x"}


#: The sentence naming the datasets that need no download; the registry fills it in from its entries.
OFFLINE_HINT = ""


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


def unavailable(dataset: str, path: Path, urls: Sequence[str], reason: str, *,
                archive: Optional[Path] = None) -> DataUnavailable:
    """The error for a missing file: what is needed, where from, and what to use instead.

    ``archive`` is where the file's archive belongs when the file is extracted from one (the
    addresses in ``urls`` are then the archive's).
    """
    where = " or ".join(urls) if urls else "(no public address; see the dataset's docstring)"
    if archive is None:
        how = "and put it at that path"
    else:
        how = f"as the archive {archive}, from which it is extracted on first use"
    return DataUnavailable(
        f"Dataset {dataset!r} needs the file {path}, which is not on disk, and {reason}. "
        f"Download it from {where} {how} (or point data_dir= / ${ENV_VAR} at a folder that "
        f"holds it). {OFFLINE_HINT}")


def corrupt(path: PathLike, reason: str, hint: str = "") -> DataCorrupt:
    """The error for a file that is on disk but cannot be used; ``hint`` follows the fix."""
    return DataCorrupt(f"File {path} is truncated or corrupt: {reason}. Delete it and download it again."
                       + (f" {hint}" if hint else ""))


def md5sum(path: PathLike) -> str:
    """Hex md5 digest of a file, read in chunks of 1 MiB."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Open ``path`` for writing so that it appears complete or not at all.

    Yields a file opened in ``mode`` (``"wb"`` or ``"w"``; ``open_kwargs`` such as
    ``encoding=`` go to :func:`open`) on a new temporary file ``.<name>.<random>.part`` in the
    destination folder (created if missing), so that the final rename stays on one file system.
    When the block ends without an exception the file is flushed, ``os.fsync``-ed, closed and
    moved over ``path`` with ``os.replace`` (atomic on POSIX and Windows); on any exception the
    temporary file is removed and ``path`` is left as it was. The temporary file is created like
    any other (permissions from the umask), not with ``tempfile``'s owner-only mode.

    Example::

        with atomic_write(run / "checkpoint.pt") as f:
            torch.save(state, f)

    Raises:
        ValueError: ``mode`` is not ``"wb"`` or ``"w"`` (appending cannot be atomic).
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}; the file is written from "
                         f"scratch, so read the old content first if you mean to append.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    f = open(tmp, _WRITE_MODES[mode], **open_kwargs)  # "x": never reuses someone else's file
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


# -------------------------------------------------------------------------------- download

def fetch(path: Path, urls: Sequence[str], md5: Optional[str], *, dataset: str,
          timeout: float = TIMEOUT_S) -> str:
    """Download the first address that answers into ``path``, atomically, checking ``md5``.

    Returns:
        The md5 of the bytes written (equal to ``md5`` when one was given).

    Raises:
        DataUnavailable: every address failed (the message lists why).
        DataCorrupt: the downloaded bytes do not match ``md5`` (nothing is written).
    """
    failures = []
    for url in urls:
        try:
            return _download(url, path, md5, timeout)
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError, timeouts: OSErrors
            if isinstance(err, DataCorrupt):
                raise
            logger.warning("download of %s failed: %s", url, err)
            failures.append(f"{type(err).__name__}: {err}")
    raise unavailable(dataset, path, urls, "downloading it failed (" + "; ".join(failures) + ")") from None


def _download(url: str, path: Path, md5: Optional[str], timeout: float) -> str:
    """Stream ``url`` through :func:`atomic_write` into ``path``, hashing on the way."""
    logger.info("downloading %s to %s", url, path)
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_write(path) as out:
        total = int(response.headers.get("Content-Length") or 0) if hasattr(response, "headers") else 0
        with _progress(total, path.name) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if md5 is not None and digest.hexdigest() != md5:
            raise corrupt(path, f"the download from {url} has md5 {digest.hexdigest()}, not the published {md5}")
    return digest.hexdigest()


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
                timeout: float = TIMEOUT_S) -> tuple[str, Optional[str]]:
    """Address and md5 of file ``key`` of Zenodo record ``record``, read from Zenodo's metadata.

    Zenodo publishes each file's md5 in its record (``"checksum": "md5:..."``). This is the
    fallback for files whose sum no citable source pins (see ``Resource.zenodo_record``).
    Raises :class:`DataUnavailable` when the metadata cannot be read.
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


# --------------------------------------------------------------------------------- archives

def extract_members(archive: Path, root: Path, members: Mapping[str, str],
                    md5: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Extract members of a tar archive, each to its own path under ``root``, atomically.

    Args:
        archive: the tar file (any compression ``tarfile`` reads).
        root: the data directory; no file is written outside it.
        members: member name -> target path relative to ``root``. Only regular files named here
            are read; the archive is read once, and only up to the last member wanted.
        md5: member name -> published md5; a member whose bytes differ is not written.

    Returns:
        member name -> md5 of the bytes written.

    Raises:
        DataCorrupt: the archive is unreadable, lacks a member, a member fails its md5, or a
            target would leave ``root``.
    """
    wanted, md5, found = dict(members), dict(md5 or {}), {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.name not in wanted or not member.isfile():
                    continue
                target = (root / wanted.pop(member.name)).resolve()
                if root.resolve() not in target.parents:
                    raise corrupt(archive, f"member {member.name!r} would leave {root}")
                found[member.name] = _write_member(archive, tar, member, target, md5.get(member.name))
                if not wanted:
                    break
    except (tarfile.TarError, EOFError, OSError) as err:
        raise corrupt(archive, f"{type(err).__name__}: {err}") from None
    if wanted:
        raise corrupt(archive, f"members {sorted(wanted)} are missing")
    return found


def _write_member(archive: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path,
                  md5: Optional[str]) -> str:
    digest = hashlib.md5()
    source = tar.extractfile(member)
    with atomic_write(target) as out:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
        if md5 is not None and digest.hexdigest() != md5:
            raise corrupt(archive, f"member {member.name!r} has md5 {digest.hexdigest()}, not the published {md5}")
    return digest.hexdigest()


def optional(module: str, package: str):
    """Import an optional dependency, or raise an ImportError naming the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"This dataset needs the optional package {package!r}: "
                          f"pip install {package} (or pip install 'nodeopt[data]').") from None
