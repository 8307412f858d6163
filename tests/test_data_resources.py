"""nodeopt.data.resources: one Resource list per dataset drives "is it on disk", "fetch it" and the
md5 check; files.atomic_write is the one way files are put in place.

The files here are tiny fakes, so their md5 never matches a published one: tests that need a match
monkeypatch the resource list to the fake file's md5. No test touches the network.
"""

import dataclasses
import hashlib
import io
import json
import os
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import nodeopt.data as data
from nodeopt.data import DataCorrupt, DataUnavailable, files, images, registry, resources, tabular, timeseries
from nodeopt.data.resources import Resource

FILE_BASED = [s for specs in data.DATASETS.values() for s in specs.values() if not s.offline]


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_svhn(root: Path) -> None:
    io_ = pytest.importorskip("scipy.io")
    for r in images.SVHN:
        io_.savemat(root / r.path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [10]], np.uint8)})


def pin_to_disk(monkeypatch, root: Path) -> None:
    """Make SVHN's published md5s those of the fake files under ``root``."""
    monkeypatch.setattr(images, "SVHN", tuple(dataclasses.replace(r, md5=md5_of(root / r.path)) for r in images.SVHN))


@pytest.fixture
def md5_calls(monkeypatch):
    """Every path that resources hashes to verify a file on disk."""
    calls = []

    def counting(path):
        calls.append(Path(path))
        return files.md5sum(path)

    monkeypatch.setattr(resources, "md5sum", counting)
    return calls


# ------------------------------------------------------------------------- verification

def test_a_file_whose_md5_differs_from_the_published_one_is_refused(tmp_path):
    write_svhn(tmp_path)
    with pytest.raises(DataCorrupt, match=r"train_32x32\.mat is truncated or corrupt: its md5 is [0-9a-f]{32}, not "
                                          r"the published e26dedcc434d2e4c54c9b2d4a06d8373\. Delete it and download "
                                          r"it again\. \(For a file you made yourself .*pass verify=False\.\)"):
        data.svhn(tmp_path, download=False)
    assert data.svhn(tmp_path, download=False, verify=False).sizes == {"train": 2, "test": 2}


def test_a_matching_file_is_hashed_once_then_remembered_in_process_and_in_the_stamp(tmp_path, monkeypatch, md5_calls):
    write_svhn(tmp_path)
    pin_to_disk(monkeypatch, tmp_path)
    first = data.svhn(tmp_path, download=False)
    again = data.svhn(tmp_path, download=False)
    assert first.y_train.tolist() == again.y_train.tolist() == [1, 0]
    assert sorted(p.name for p in md5_calls) == ["test_32x32.mat", "train_32x32.mat"]  # once each, not twice
    stamp = json.loads((tmp_path / resources.STAMP).read_text())["files"]
    train = tmp_path / "train_32x32.mat"
    assert stamp["train_32x32.mat"] == {"size": train.stat().st_size, "mtime_ns": train.stat().st_mtime_ns,
                                        "md5": images.SVHN[0].md5}
    monkeypatch.setattr(resources, "_VERIFIED", {})  # a new process: only the stamp remembers
    data.svhn(tmp_path, download=False)
    assert len(md5_calls) == 2


def test_a_file_changed_after_verification_is_hashed_again(tmp_path, monkeypatch, md5_calls):
    write_svhn(tmp_path)
    pin_to_disk(monkeypatch, tmp_path)
    data.svhn(tmp_path, download=False)
    test_file = tmp_path / "test_32x32.mat"
    before = test_file.stat()
    test_file.write_bytes(test_file.read_bytes()[:-1] + b"\x01")  # same size, new bytes
    os.utime(test_file, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # a later mtime, on any clock
    with pytest.raises(DataCorrupt, match=r"test_32x32\.mat is truncated or corrupt: its md5 is"):
        data.svhn(tmp_path, download=False)
    assert [p.name for p in md5_calls].count("test_32x32.mat") == 2


def test_files_without_a_published_md5_are_not_hashed(tmp_path, md5_calls):
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", np.random.default_rng(0).normal(size=(40, 3)))
    assert tabular.MAF["miniboone"][0].md5 is None
    assert data.miniboone(tmp_path, download=False).dim == 3
    assert md5_calls == []


def test_a_read_only_data_directory_still_loads(tmp_path, monkeypatch, md5_calls):
    write_svhn(tmp_path)
    pin_to_disk(monkeypatch, tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(resources, "atomic_write", refuse)
    data.svhn(tmp_path, download=False)
    data.svhn(tmp_path, download=False)
    assert not (tmp_path / resources.STAMP).exists() and len(md5_calls) == 2  # remembered in process


def cifar_archive(root: Path) -> Path:
    src = root / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    for r in images.CIFAR10:
        with open(src / Path(r.path).name, "wb") as f:
            f.write(b"not a pickle")
    path = root / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    return path


def test_an_archive_on_disk_is_verified_before_anything_is_extracted(tmp_path):
    cifar_archive(tmp_path)
    with pytest.raises(DataCorrupt, match=r"cifar-10-python\.tar\.gz is truncated or corrupt: its md5 is [0-9a-f]{32}, "
                                          r"not the published c58f30108f718f92721af3b95e74349a"):
        data.cifar10(tmp_path, download=False)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_an_extracted_member_is_checked_against_its_own_published_md5(tmp_path, monkeypatch):
    archive = cifar_archive(tmp_path)
    pinned = dataclasses.replace(images.CIFAR10_ARCHIVE, md5=md5_of(archive))
    monkeypatch.setattr(images, "CIFAR10", tuple(dataclasses.replace(r, archive=pinned) for r in images.CIFAR10))
    with pytest.raises(DataCorrupt, match=r"cifar-10-python\.tar\.gz is truncated or corrupt: member "
                                          r"'cifar-10-batches-py/data_batch_1' has md5 [0-9a-f]{32}, not the "
                                          r"published c99cafc152244af753f735de768cd75f"):
        data.cifar10(tmp_path, download=False)
    assert not (tmp_path / "cifar-10-batches-py" / "data_batch_1").exists()
    assert not list(tmp_path.rglob("*.part"))


# ------------------------------------------------------------ one list for both consumers

@pytest.mark.parametrize("spec", FILE_BASED, ids=lambda s: s.name)
def test_is_available_checks_exactly_the_resource_paths(tmp_path, spec):
    assert not data.is_available(spec.task, spec.name, tmp_path)
    for r in spec.resources:
        (tmp_path / r.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / r.path).write_bytes(b"")
    assert data.is_available(spec.task, spec.name, tmp_path)
    for r in spec.resources:
        (tmp_path / r.path).unlink()
        assert not data.is_available(spec.task, spec.name, tmp_path), r.path
        (tmp_path / r.path).write_bytes(b"")


@pytest.mark.parametrize("spec", [s for s in FILE_BASED if s.resources[0].archive is not None], ids=lambda s: s.name)
def test_an_archive_on_disk_makes_its_members_available(tmp_path, spec):
    (tmp_path / spec.resources[0].archive.path).write_bytes(b"")
    assert data.is_available(spec.task, spec.name, tmp_path)


@pytest.mark.parametrize("spec", FILE_BASED, ids=lambda s: s.name)
def test_every_loader_fetches_the_resource_list_its_registry_spec_holds(tmp_path, monkeypatch, spec):
    seen = []

    class Stop(Exception):
        pass

    def record(resource_list, root, **kwargs):
        seen.append((resource_list, root, kwargs))
        raise Stop

    for module in (images, tabular, timeseries):
        monkeypatch.setattr(module, "ensure", record)
    with pytest.raises(Stop):
        data.load(spec.task, spec.name, data_dir=tmp_path, download=False, verify=False)
    (resource_list, root, kwargs), = seen
    assert resource_list is spec.resources and root == tmp_path
    assert kwargs == {"dataset": spec.name, "download": False, "verify": False}


class FakeResponse(io.BytesIO):
    headers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_a_download_puts_each_file_where_is_available_looks(tmp_path, monkeypatch):
    payloads = {r.urls[0]: f"payload of {r.path}".encode() for r in images.SVHN}
    monkeypatch.setattr(images, "SVHN", tuple(dataclasses.replace(r, md5=hashlib.md5(payloads[r.urls[0]]).hexdigest())
                                              for r in images.SVHN))
    monkeypatch.setitem(data.DATASETS["image"], "svhn",
                        dataclasses.replace(data.DATASETS["image"]["svhn"], resources=images.SVHN))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(payloads[url]))
    assert not data.is_available("image", "svhn", tmp_path)
    paths = resources.ensure(images.SVHN, tmp_path, dataset="svhn")
    assert paths == [tmp_path / r.path for r in images.SVHN] and data.is_available("image", "svhn", tmp_path)
    assert [p.read_bytes() for p in paths] == list(payloads.values())


def test_missing_member_without_download_names_the_member_and_the_archive(tmp_path):
    with pytest.raises(DataUnavailable, match=r"needs the file .*hepmass/1000_train\.csv, which is not on disk, and "
                                              r"download=False was given\. Download it from https://zenodo\.org/"
                                              r"records/1161203/.* as the archive .*data\.tar\.gz, from which it is "
                                              r"extracted on first use"):
        data.hepmass(tmp_path, download=False)


# ---------------------------------------------------------------------- the descriptions

def test_every_file_based_dataset_is_described_and_offline_hint_follows_the_registry():
    for spec in FILE_BASED:
        for r in spec.resources:
            assert r.md5 is not None or r.zenodo_record is not None or (r.archive and r.archive.md5), r.path
    offline = [n for specs in data.DATASETS.values() for n, s in specs.items() if s.offline]
    hint = registry.offline_hint()
    assert all(name in hint for name in offline)
    assert not any(f" {s.name}," in hint or f" {s.name}." in hint for s in FILE_BASED)


@pytest.mark.parametrize("kwargs, message", [
    (dict(path="../escape.bin"), r"Resource path must be relative to the data directory.*got '\.\./escape\.bin'"),
    (dict(path="/abs/file"), r"Resource path must be relative .*got '/abs/file'"),
    (dict(path="f", md5="ABC"), r"Resource 'f': md5 must be 32 lowercase hex digits or None, got 'ABC'"),
    (dict(path="f", member="f"), r"Resource 'f': archive= and member= go together, got archive=None and member='f'"),
    (dict(path="f", urls=("http://x",), archive=Resource("a.tar", urls=("http://a",)), member="f"),
     r"Resource 'f': a member is fetched through its archive"),
])
def test_resource_rejects_descriptions_that_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Resource(**kwargs)


# ------------------------------------------------------------------------- atomic_write

def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "state.bin"
    with files.atomic_write(target) as f:
        f.write(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="crash"):
        with files.atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"first" and sorted(p.name for p in target.parent.iterdir()) == ["state.bin"]
    with files.atomic_write(target, "w", encoding="utf-8") as f:
        f.write("text")
    assert target.read_text(encoding="utf-8") == "text"


def test_atomic_write_refuses_modes_that_cannot_be_atomic(tmp_path):
    with pytest.raises(ValueError, match=r"atomic_write mode must be 'wb' or 'w', got 'ab'"):
        with files.atomic_write(tmp_path / "x", "ab"):
            pass
    assert list(tmp_path.iterdir()) == []
