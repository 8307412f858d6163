"""nodeopt.data: datasets read from tiny files written here in their official formats.

Every expected value is constructed in the test (the pixels, rows and columns written into the
files), never computed by the code under test. No test touches the network: downloads go through
a monkeypatched ``urllib.request.urlopen``. The files made here cannot have the published md5
sums, so loads of datasets with pinned sums pass ``verify=False`` (tests/test_data_resources.py
tests the check itself).
"""

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import nodeopt.data as data
from nodeopt.data import DataCorrupt, DataUnavailable
from nodeopt.data import files, images, registry, timeseries

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------------------- file writers

def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """IDX: magic 0x0000, dtype 0x08 (uint8), ndim; big-endian uint32 sizes; the bytes."""
    payload = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_mnist(root: Path, n_train=12, n_test=5, compress=True):
    raw = root / "MNIST" / "raw"
    truth = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte", x, compress)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y, compress)
        truth[split] = (x, y)
    return truth


def write_cifar(root: Path, n=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    truth = {}
    for name in (Path(r.path).name for r in images.CIFAR10):
        x = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = [int(v) for v in RNG.integers(0, 10, size=n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": x, b"labels": y}, f)
        truth[name] = (x, y)
    return truth


def write_svhn(root: Path, n_train=10, n_test=4):
    io_ = pytest.importorskip("scipy.io")
    truth = {}
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = RNG.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.arange(1, n + 1).reshape(n, 1) % 10 + 1  # labels 1..10, 10 meaning digit 0
        io_.savemat(root / name, {"X": x, "y": y.astype(np.uint8)})
        truth[name] = (x, y[:, 0])
    return truth


def truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


# ------------------------------------------------------------------------------ data_dir

def test_data_dir_prefers_argument_then_environment_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NODEOPT_DATA", str(tmp_path / "env"))
    assert data.data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_dir() == tmp_path / "env"
    monkeypatch.delenv("NODEOPT_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.data_dir() == tmp_path / "home" / ".cache" / "nodeopt"


# ---------------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("compress", [True, False])
def test_mnist_reads_idx_files_in_torchvision_layout(tmp_path, compress):
    truth = write_mnist(tmp_path, compress=compress)
    ds = data.mnist(tmp_path, download=False, verify=False, normalize=False)
    assert ds.kind == "image" and ds.num_classes == 10 and ds.dim == 784
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.sizes == {"train": 12, "test": 5}
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), truth["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test.numpy(), truth["t10k"][1])
    assert len(ds.source) == 4 and all(Path(s).is_file() for s in ds.source)


def test_mnist_normalises_with_training_pixel_statistics(tmp_path):
    truth = write_mnist(tmp_path)
    ds = data.mnist(tmp_path, download=False, verify=False)
    train, test = truth["train"][0] / 255.0, truth["t10k"][0] / 255.0
    mean, std = train.mean(), train.std()
    np.testing.assert_allclose(ds.x_test[:, 0].numpy(), (test - mean) / std, rtol=1e-5, atol=1e-5)
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std(unbiased=False)) - 1) < 1e-5
    np.testing.assert_allclose(ds.info["mean"], [mean], rtol=1e-12)
    np.testing.assert_allclose(ds.info["std"], [std], rtol=1e-12)


def test_mnist_truncated_gzip_names_the_file(tmp_path):
    write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    truncate(bad)
    with pytest.raises(DataCorrupt, match=r"train-images-idx3-ubyte\.gz is truncated or corrupt"):
        data.mnist(tmp_path, download=False, verify=False)


def test_mnist_truncated_payload_and_bad_magic_name_the_file(tmp_path):
    write_mnist(tmp_path, compress=False)
    raw = tmp_path / "MNIST" / "raw"
    truncate(raw / "t10k-images-idx3-ubyte", keep=0.9)
    with pytest.raises(DataCorrupt, match=r"t10k-images-idx3-ubyte is truncated .*header promises"):
        data.mnist(tmp_path, download=False, verify=False)
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"\x1f\x8b\x08\x00" + bytes(100))
    with pytest.raises(DataCorrupt, match="magic number 1f8b0800 is not an IDX uint8 header"):
        data.mnist(tmp_path, download=False, verify=False)
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(DataCorrupt, match="shorter than the 4-byte IDX magic"):
        data.mnist(tmp_path, download=False, verify=False)
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataCorrupt, match="header ends before its dimensions"):
        data.mnist(tmp_path, download=False, verify=False)


def test_mnist_images_and_labels_of_different_lengths_are_corrupt(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataCorrupt, match=r"images of shape \(12, 28, 28\) do not match labels of shape \(3,\)"):
        data.mnist(tmp_path, download=False, verify=False)


# ------------------------------------------------------------------------------- CIFAR-10

def test_cifar10_reads_python_pickles(tmp_path):
    truth = write_cifar(tmp_path)
    ds = data.cifar10(tmp_path, download=False, verify=False, normalize=False)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    first, _ = truth["data_batch_1"]
    # a row is the red plane, then green, then blue, each 32x32 in row-major order
    np.testing.assert_allclose(ds.x_train[0, 1].numpy(), first[0, 1024:2048].reshape(32, 32) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.x_train[4:8].reshape(4, -1).numpy(), truth["data_batch_2"][0] / 255.0,
                               rtol=1e-6)
    assert ds.y_train.tolist() == sum((truth[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert ds.y_test.tolist() == truth["test_batch"][1]


def test_cifar10_normalises_each_channel_with_training_statistics(tmp_path):
    truth = write_cifar(tmp_path)
    ds = data.cifar10(tmp_path, download=False, verify=False)
    train = np.concatenate([truth[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 1024) / 255.0
    np.testing.assert_allclose(ds.info["mean"], train.mean(axis=(0, 2)), rtol=1e-10)
    np.testing.assert_allclose(ds.info["std"], train.std(axis=(0, 2)), rtol=1e-10)
    np.testing.assert_allclose(ds.x_train.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)


def test_cifar10_truncated_pickle_names_the_file(tmp_path):
    write_cifar(tmp_path)
    truncate(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataCorrupt, match=r"data_batch_3 is truncated or corrupt: not a CIFAR batch pickle"):
        data.cifar10(tmp_path, download=False, verify=False)


def test_cifar10_wrong_row_width_is_corrupt(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataCorrupt, match=r"test_batch .*data of shape \(2, 100\) with 2 labels"):
        data.cifar10(tmp_path, download=False, verify=False)


def test_cifar10_batches_are_extracted_from_the_official_archive(tmp_path):
    import tarfile

    truth = write_cifar(tmp_path / "src")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = data.cifar10(tmp_path, download=False, verify=False, normalize=False)
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()
    assert ds.y_test.tolist() == truth["test_batch"][1]


# ----------------------------------------------------------------------------------- SVHN

def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    truth = write_svhn(tmp_path)
    ds = data.svhn(tmp_path, download=False, verify=False, normalize=False)
    x_test, y_test = truth["test_32x32.mat"]
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert truth["train_32x32.mat"][1].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 10, 1]
    assert ds.y_train.tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert ds.y_test.tolist() == [int(v) % 10 for v in y_test]
    # X[h, w, c, i] becomes x[i, c, h, w]
    np.testing.assert_allclose(ds.x_test[2, 1, 5, 7].item(), x_test[5, 7, 1, 2] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.x_test.permute(2, 3, 1, 0).numpy(), x_test / 255.0, rtol=1e-6)


def test_svhn_label_10_means_digit_0(tmp_path):
    io_ = pytest.importorskip("scipy.io")
    x = np.zeros((32, 32, 3, 3), np.uint8)
    for name in (r.path for r in images.SVHN):
        io_.savemat(tmp_path / name, {"X": x, "y": np.array([[10], [1], [9]], np.uint8)})
    ds = data.svhn(tmp_path, download=False, verify=False)
    assert ds.y_train.tolist() == [0, 1, 9] and ds.y_test.tolist() == [0, 1, 9]


def test_svhn_truncated_mat_names_the_file(tmp_path):
    write_svhn(tmp_path)
    truncate(tmp_path / "test_32x32.mat")
    with pytest.raises(DataCorrupt, match=r"test_32x32\.mat is truncated or corrupt: not an SVHN \.mat file"):
        data.svhn(tmp_path, download=False, verify=False)


def test_svhn_wrong_array_shape_is_corrupt(tmp_path):
    io_ = pytest.importorskip("scipy.io")
    write_svhn(tmp_path)
    io_.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DataCorrupt, match=r"train_32x32\.mat .*expected \(32, 32, 3, N\)"):
        data.svhn(tmp_path, download=False, verify=False)


# --------------------------------------------------------------------------------- digits

def test_digits_fixed_stratified_split_and_scalar_standardisation():
    ds = data.digits()
    assert ds.sizes == {"train": 1437, "test": 360} and ds.shape == (1, 8, 8) and ds.num_classes == 10
    counts = torch.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 360 * (about 178/1797 per class)
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std(unbiased=False)) - 1) < 1e-5
    again = data.digits()
    assert torch.equal(ds.x_test, again.x_test) and torch.equal(ds.y_train, again.y_train)


# ---------------------------------------------------------------------------- time series

def test_japanese_vowels_from_aeons_wheel():
    pytest.importorskip("aeon")
    ds = data.japanese_vowels()
    assert ds.kind == "timeseries" and ds.num_classes == 9 and ds.dim == 12
    assert ds.sizes == {"train": 448, "val": 96, "test": 96}  # 640 series, 70/15/15
    assert ds.x_train.shape == (448, 29, 12) and ds.x_train.dtype == torch.float32
    assert set(ds.y_train.tolist()) == set(range(9)) and ds.info["classes"] == [str(i) for i in range(1, 10)]
    lengths = torch.cat([ds.info["lengths"][k] for k in ("train", "val", "test")])
    assert int(lengths.min()) == 7 and int(lengths.max()) == 29
    for x, n in zip(ds.x_train, ds.info["lengths"]["train"]):  # padded with the last observed value
        assert torch.equal(x[n:], x[n - 1].expand(29 - int(n), 12))
    torch.testing.assert_close(ds.x_train.mean(dim=(0, 1)), torch.zeros(12), atol=1e-4, rtol=0)
    torch.testing.assert_close(ds.info["times"], torch.arange(29, dtype=torch.float32))
    for split in ("train", "val", "test"):  # stratified: class shares as in all 640 series
        y = getattr(ds, f"y_{split}")
        share = torch.bincount(y, minlength=9) / len(y)
        all_y = torch.cat([ds.y_train, ds.y_val, ds.y_test])
        torch.testing.assert_close(share, torch.bincount(all_y, minlength=9) / 640.0, atol=0.02, rtol=0)


def write_ts(path: Path, name: str, series, labels, dims: int) -> None:
    """The .ts format: header lines, then one case per line, channels split by ':', label last."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"@problemName {name}", "@timeStamps false", "@missing false", "@univariate false",
             f"@dimensions {dims}", "@equalLength false", f"@classLabel true {' '.join(sorted(set(labels)))}",
             "@data"]
    for s, y in zip(series, labels):
        lines.append(":".join(",".join(repr(float(v)) for v in ch) for ch in s) + f":{y}")
    path.write_text("\n".join(lines) + "\n")


def test_uea_files_in_aeon_layout_are_padded_split_and_labelled(tmp_path):
    pytest.importorskip("aeon")
    name, n = "CharacterTrajectories", 40
    lengths = [3 + i % 5 for i in range(n)]
    series = [np.full((3, length), float(i)) + np.arange(length) for i, length in enumerate(lengths)]
    labels = ["b" if i % 2 else "a" for i in range(n)]
    labels[0] = "b"  # first appearance order: b -> 0, a -> 1
    write_ts(tmp_path / name / f"{name}_TRAIN.ts", name, series[:20], labels[:20], 3)
    write_ts(tmp_path / name / f"{name}_TEST.ts", name, series[20:], labels[20:], 3)
    ds = data.char_traj(tmp_path, download=False)
    assert ds.sizes == {"train": 28, "val": 6, "test": 6} and ds.x_train.shape == (28, 7, 3)
    assert ds.info["classes"] == ["b", "a"] and ds.num_classes == 2
    x = torch.cat([ds.x_train, ds.x_val, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_val, ds.y_test])
    raw = x * (torch.as_tensor(ds.info["std"], dtype=torch.float32) + 1e-5) + torch.as_tensor(
        ds.info["mean"], dtype=torch.float32)
    ids = raw[:, 0, 0].round().long()  # series i starts at value i
    assert sorted(ids.tolist()) == list(range(n))
    for row, i, label in zip(raw, ids.tolist(), y.tolist()):
        expected = np.concatenate([np.arange(lengths[i]), np.full(7 - lengths[i], lengths[i] - 1)]) + i
        np.testing.assert_allclose(row[:, 2].numpy(), expected, atol=1e-4)
        assert label == (0 if labels[i] == "b" else 1)
    train_raw = raw[: len(ds.x_train)].reshape(-1, 3).double()
    np.testing.assert_allclose(ds.info["mean"], train_raw.mean(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(ds.info["std"], train_raw.std(0).numpy(), rtol=1e-4)


def test_uea_unparseable_ts_file_names_the_file(tmp_path):
    pytest.importorskip("aeon")
    folder = tmp_path / "ArticularyWordRecognition"
    folder.mkdir()
    for split in ("TRAIN", "TEST"):
        (folder / f"ArticularyWordRecognition_{split}.ts").write_text(
            "@problemName x\n@classLabel true a\n@data\n1,2:a\n1,zz:a\n")
    with pytest.raises(DataCorrupt, match=r"ArticularyWordRecognition_TRAIN\.ts is truncated .*aeon could not"):
        data.art_wr(tmp_path, download=False)
    for split in ("TRAIN", "TEST"):
        (folder / f"ArticularyWordRecognition_{split}.ts").write_text("garbage\n")
    with pytest.raises(DataCorrupt, match=r"_TRAIN\.ts is truncated or corrupt: aeon read 0 series and 0 labels"):
        data.art_wr(tmp_path, download=False)


def test_uea_too_few_series_for_a_stratified_split(tmp_path):
    pytest.importorskip("aeon")
    name = "CharacterTrajectories"
    for split in ("TRAIN", "TEST"):
        write_ts(tmp_path / name / f"{name}_{split}.ts", name, [np.ones((3, 4))], ["a"], 3)
    with pytest.raises(ValueError, match=r"2 series with class counts \[2\] are too few for a stratified"):
        data.char_traj(tmp_path, download=False)


def test_uea_missing_files_without_download_say_where_they_go(tmp_path):
    with pytest.raises(DataUnavailable, match=r"SpokenArabicDigits_TRAIN\.ts, which is not on disk, and "
                                              r"download=False was given.*zenodo\.org/records/18734026"):
        data.spo_ad(tmp_path, download=False)


# ------------------------------------------------------------------------------- density

def test_miniboone_drops_repeated_features_splits_and_zscores(tmp_path):
    n = 100
    raw = RNG.normal(size=(n, 4)) * [1, 2, 3, 4] + [0, 1, 2, 3]
    raw[:, 2] = np.where(np.arange(n) % 3 == 0, -7.0, RNG.normal(size=n))  # minimum repeated 34 times
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", raw)
    ds = data.miniboone(tmp_path, download=False)
    kept = raw[:, [0, 1, 3]]
    assert ds.sizes == {"train": 81, "val": 9, "test": 10} and ds.dim == 3 and ds.y_train is None
    mean, std = kept[:90].mean(0), kept[:90].std(0)
    np.testing.assert_allclose(ds.x_test.numpy(), (kept[90:] - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.x_val.numpy(), (kept[81:90] - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.x_train.numpy(), (kept[:81] - mean) / std, rtol=1e-5, atol=1e-6)


def test_miniboone_truncated_npy_names_the_file(tmp_path):
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", np.ones((50, 4)))
    truncate(tmp_path / "miniboone" / "data.npy", keep=0.6)
    with pytest.raises(DataCorrupt, match=r"miniboone/data\.npy is truncated or corrupt: not a \.npy array"):
        data.miniboone(tmp_path, download=False)
    np.save(tmp_path / "miniboone" / "data.npy", np.ones(5))
    with pytest.raises(DataCorrupt, match=r"array of shape \(5,\), expected \(N, D\)"):
        data.miniboone(tmp_path, download=False)


def test_gas_drops_named_and_correlated_columns(tmp_path):
    pd = pytest.importorskip("pandas")
    n = 200
    a = RNG.normal(size=n)
    frame = pd.DataFrame({"Time": np.arange(n), "Meth": RNG.normal(size=n), "Eth": RNG.normal(size=n),
                          "a": a, "b": 2 * a + 0.01 * RNG.normal(size=n), "c": RNG.normal(size=n)})
    (tmp_path / "gas").mkdir()
    frame.to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    ds = data.gas(tmp_path, download=False)
    assert ds.info["columns"] == ["b", "c"] and ds.dim == 2  # the first of the correlated pair goes
    kept = frame[["b", "c"]].to_numpy()
    z = (kept - kept.mean(0)) / kept.std(0, ddof=1)  # MAF: statistics of all rows, as pandas (ddof=1)
    assert ds.sizes == {"train": 162, "val": 18, "test": 20}
    np.testing.assert_allclose(ds.x_train.numpy(), z[:162], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.x_test.numpy(), z[180:], rtol=1e-5, atol=1e-6)


def test_gas_without_its_columns_or_pandas_gives_clear_errors(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    (tmp_path / "gas").mkdir()
    pd.DataFrame({"a": [1.0, 2.0]}).to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    with pytest.raises(DataCorrupt, match=r"ethylene_CO\.pickle .*lacks the columns \['Meth', 'Eth', 'Time'\]"):
        data.gas(tmp_path, download=False)
    truncate(tmp_path / "gas" / "ethylene_CO.pickle")
    with pytest.raises(DataCorrupt, match=r"ethylene_CO\.pickle is truncated or corrupt: not a pandas pickle"):
        data.gas(tmp_path, download=False)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs the optional package 'pandas'"):
        data.gas(tmp_path, download=False)


def test_power_drops_two_columns_and_adds_documented_noise(tmp_path):
    n = 300
    raw = np.tile(np.arange(8, dtype=np.float64) * 10, (n, 1))
    raw[:, 7] = np.arange(n)  # the time column gets no noise: it identifies the rows
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", raw)
    ds = data.power(tmp_path, download=False)
    assert ds.dim == 6 and ds.sizes == {"train": 243, "val": 27, "test": 30}
    x = torch.cat([ds.x_train, ds.x_val, ds.x_test]).double().numpy() * ds.info["std"] + ds.info["mean"]
    lo = np.array([0, 20, 40, 50, 60])  # columns 1 (value 10) and 3 (value 30) are gone
    width = np.array([0.001, 0.01, 1, 1, 1])
    assert np.all(x[:, :5] >= lo - 1e-5) and np.all(x[:, :5] < lo + width + 1e-5)
    assert np.all(x[:, :5].std(0) > width / 10)  # noise present in every noisy column
    order = np.round(x[:, 5]).astype(int)
    assert sorted(order.tolist()) == list(range(n)) and order.tolist() != list(range(n))  # shuffled
    again = data.power(tmp_path, download=False)
    assert torch.equal(ds.x_test, again.x_test)
    assert not torch.equal(ds.x_test, data.power(tmp_path, download=False, seed=0).x_test)


def test_power_with_wrong_column_count_is_corrupt(tmp_path):
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", np.ones((20, 9)))
    with pytest.raises(DataCorrupt, match=r"power/data\.npy .*array of shape \(20, 9\), expected \(N, 8\)"):
        data.power(tmp_path, download=False)


def write_hepmass(path: Path, n: int, offset: float) -> np.ndarray:
    """Official layout: header ``# label,f0,...,f26,mass``; label 1 signal, 0 background."""
    label = (np.arange(n) % 2).astype(float)
    feats = RNG.normal(size=(n, 27)) + offset
    feats[:, 5] = RNG.integers(0, 3, size=n)  # a discrete feature
    feats[label == 0] = 1e6  # background rows: would be visible if they leaked through
    rows = np.column_stack([label, feats, np.full(n, 1000.0)])
    header = "# label," + ",".join(f"f{i}" for i in range(27)) + ",mass"
    np.savetxt(path, rows, delimiter=",", header=header, comments="", fmt="%.10g")
    return rows


def test_hepmass_keeps_signal_rows_and_drops_discrete_features(tmp_path):
    (tmp_path / "hepmass").mkdir()
    train = write_hepmass(tmp_path / "hepmass" / "1000_train.csv", 200, 0.0)
    test = write_hepmass(tmp_path / "hepmass" / "1000_test.csv", 60, 3.0)
    ds = data.hepmass(tmp_path, download=False)
    keep = [1 + i for i in range(27) if i != 5]  # label, discrete f5 and constant mass removed
    signal = train[train[:, 0] == 1][:, keep]
    mean, std = signal.mean(0), signal.std(0, ddof=1)
    assert ds.dim == 26 and ds.sizes == {"train": 90, "val": 10, "test": 30}
    np.testing.assert_allclose(ds.x_train.numpy(), ((signal - mean) / std)[:90], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ds.x_val.numpy(), ((signal - mean) / std)[90:], rtol=1e-4, atol=1e-5)
    expected_test = (test[test[:, 0] == 1][:, keep] - mean) / std
    np.testing.assert_allclose(ds.x_test.numpy(), expected_test, rtol=1e-4, atol=1e-5)


def test_hepmass_bad_csv_names_the_file(tmp_path):
    (tmp_path / "hepmass").mkdir()
    write_hepmass(tmp_path / "hepmass" / "1000_train.csv", 40, 0.0)
    (tmp_path / "hepmass" / "1000_test.csv").write_text("# label,f0\n1,2\n1,oops\n")
    with pytest.raises(DataCorrupt, match=r"1000_test\.csv is truncated or corrupt: not a numeric CSV"):
        data.hepmass(tmp_path, download=False)
    (tmp_path / "hepmass" / "1000_test.csv").write_text("# label,f0\n1,2\n1,3\n")
    with pytest.raises(DataCorrupt, match=r"1000_test\.csv .*2 columns, but the training file has 29"):
        data.hepmass(tmp_path, download=False)


def test_bsds300_reads_hdf5_splits_as_they_are(tmp_path):
    h5py = pytest.importorskip("h5py")
    (tmp_path / "BSDS300").mkdir()
    arrays = {k: RNG.normal(size=(n, 63)) for k, n in (("train", 30), ("validation", 5), ("test", 8))}
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    ds = data.bsds300(tmp_path, download=False)
    assert ds.dim == 63 and ds.sizes == {"train": 30, "val": 5, "test": 8}
    np.testing.assert_allclose(ds.x_val.numpy(), arrays["validation"], rtol=1e-6)
    np.testing.assert_allclose(ds.x_test.numpy(), arrays["test"], rtol=1e-6)


def test_bsds300_corrupt_file_names_the_file(tmp_path):
    pytest.importorskip("h5py")
    (tmp_path / "BSDS300").mkdir()
    (tmp_path / "BSDS300" / "BSDS300.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(50))
    with pytest.raises(DataCorrupt, match=r"BSDS300\.hdf5 is truncated or corrupt: not the BSDS300 HDF5"):
        data.bsds300(tmp_path, download=False)


def test_bsds300_with_mismatched_splits_is_corrupt(tmp_path):
    h5py = pytest.importorskip("h5py")
    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for k, d in (("train", 63), ("validation", 63), ("test", 10)):
            f.create_dataset(k, data=np.zeros((4, d)))
    with pytest.raises(DataCorrupt, match=r"splits of shapes \(4, 63\), \(4, 63\), \(4, 10\)"):
        data.bsds300(tmp_path, download=False)


def test_breast_cancer_split_and_training_zscore():
    ds = data.breast_cancer()
    assert ds.kind == "density" and ds.dim == 30 and ds.y_train is None
    assert ds.sizes == {"train": 457, "val": 56, "test": 56}
    torch.testing.assert_close(ds.x_train.double().mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(ds.x_train.double().std(0, unbiased=False), torch.ones(30, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert torch.equal(data.breast_cancer(seed=0).x_val, ds.x_val)
    assert not torch.equal(data.breast_cancer(seed=1).x_val, ds.x_val)


# ---------------------------------------------------------------------------------- toys

@pytest.mark.parametrize("name", ["8gaussians", "moons", "checkerboard", "pinwheel", "2spirals", "rings"])
def test_toys_have_the_requested_shape_and_are_deterministic(name):
    x = data.sample_toy(name, 501, seed=3)
    assert x.shape == (501, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_array_equal(x, data.sample_toy(name, 501, seed=3))
    assert not np.array_equal(x, data.sample_toy(name, 501, seed=4))
    ds = data.toy(name, n_train=40, n_test=10)
    assert ds.sizes == {"train": 40, "test": 10} and ds.dim == 2 and ds.kind == "density"


def test_toy_geometry_matches_ffjord_definitions():
    board = data.sample_toy("checkerboard", 2000, seed=0)
    assert np.all((np.floor(board[:, 0] / 2) + np.floor(board[:, 1] / 2)) % 2 == 0)  # black squares
    assert np.all(np.abs(board) <= 4)
    radius = np.linalg.norm(data.sample_toy("rings", 2000, seed=0), axis=1)
    nearest = np.min(np.abs(radius[:, None] - np.array([3.0, 2.25, 1.5, 0.75])), axis=1)
    assert np.mean(nearest < 0.3) > 0.99
    gauss = data.sample_toy("8gaussians", 2000, seed=0) * 1.414
    assert np.all(np.abs(np.linalg.norm(gauss, axis=1) - 4) < 2.5)


def test_toy_errors_list_valid_names_and_check_n():
    with pytest.raises(ValueError, match="Unknown toy density 'swirl'; valid names: 8gaussians, moons"):
        data.sample_toy("swirl", 10)
    with pytest.raises(ValueError, match="Unknown toy density 'swirl'; valid names"):
        data.toy("swirl")
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        data.sample_toy("moons", 0)


# ----------------------------------------------------------------------- offline, download

class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_offline_download_fails_at_once_with_one_clear_message(tmp_path, monkeypatch):
    calls = []

    def no_network(url, timeout=None, **kw):
        calls.append(timeout)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataUnavailable) as info:
        data.mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert "Offline datasets that need no download: image: digits; timeseries: japanese-vowels" in message
    assert "breast-cancer" in message and "downloading it failed (URLError" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no urllib traceback
    assert calls and all(t is not None and t <= 10 for t in calls)  # short timeouts: fails in seconds
    assert not any(p.name.endswith(".part") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("load", [lambda d: data.char_traj(d), lambda d: data.miniboone(d),
                                  lambda d: data.cifar10(d), lambda d: data.svhn(d)])
def test_every_downloadable_dataset_reports_the_offline_message(tmp_path, monkeypatch, load):
    def no_network(url, timeout=None, **kw):
        assert timeout is not None and timeout <= 10
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataUnavailable, match=r"which is not on disk, and (downloading it|reading Zenodo).*"
                                              r"Offline datasets that need no download"):
        load(tmp_path)


def test_download_false_names_the_file_and_address(tmp_path):
    with pytest.raises(DataUnavailable, match=r"cifar-10-batches-py/data_batch_1, which is not on disk, and "
                                              r"download=False was given\. Download it from https://www\.cs\."
                                              r"toronto\.edu/~kriz/cifar-10-python\.tar\.gz"):
        data.cifar10(tmp_path, download=False)
    with pytest.raises(DataUnavailable, match=r"BSDS300\.hdf5, which is not on disk.*zenodo\.org/record/1161203"):
        data.bsds300(tmp_path, download=False)


def idx_gz(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes())


def test_download_checks_md5_and_writes_atomically(tmp_path, monkeypatch):
    payloads = {"train-images-idx3-ubyte": idx_gz(np.full((3, 28, 28), 255, np.uint8)),
                "train-labels-idx1-ubyte": idx_gz(np.array([1, 2, 3], np.uint8)),
                "t10k-images-idx3-ubyte": idx_gz(np.zeros((2, 28, 28), np.uint8)),
                "t10k-labels-idx1-ubyte": idx_gz(np.array([4, 5], np.uint8))}
    published = {stem: hashlib.md5(v).hexdigest() for stem, v in payloads.items()}
    monkeypatch.setattr(images, "MNIST", tuple(dataclasses.replace(r, md5=published[Path(r.path).stem])
                                               for r in images.MNIST))
    fetched = []

    def opener(url, timeout=None, **kw):
        fetched.append(url)
        return FakeResponse(payloads[url.rsplit("/", 1)[1][:-3]])

    monkeypatch.setattr(urllib.request, "urlopen", opener)
    ds = data.mnist(tmp_path, normalize=False)
    assert len(fetched) == 4 and ds.y_train.tolist() == [1, 2, 3] and float(ds.x_train.max()) == 1.0
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(f"{k}.gz" for k in payloads)
    data.mnist(tmp_path)
    assert len(fetched) == 4  # files on disk are not downloaded again


def test_download_with_wrong_md5_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: FakeResponse(b"not the real file"))
    with pytest.raises(DataCorrupt, match=r"train_32x32\.mat is truncated or corrupt: the download from "
                                          r"http://ufldl\.stanford\.edu/housenumbers/train_32x32\.mat has md5 "
                                          r"[0-9a-f]{32}, not the published e26dedcc434d2e4c54c9b2d4a06d8373"):
        data.svhn(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_zenodo_downloads_use_the_published_md5(tmp_path, monkeypatch):
    payload = b"not a ts file"
    meta = {"files": [{"key": "CharacterTrajectories_TRAIN.ts", "checksum": "md5:" + "0" * 32,
                       "links": {"self": "https://zenodo.org/api/records/18723007/files/x/content"}}]}

    def opener(url, timeout=None, **kw):
        return FakeResponse(json_bytes(meta) if "api/records/18723007" == url.split("zenodo.org/")[1] else payload)

    monkeypatch.setattr(urllib.request, "urlopen", opener)
    with pytest.raises(DataCorrupt, match=r"CharacterTrajectories_TRAIN\.ts is truncated .*not the published 0{32}"):
        data.char_traj(tmp_path)
    assert not (tmp_path / "CharacterTrajectories" / "CharacterTrajectories_TRAIN.ts").exists()


def json_bytes(obj) -> bytes:
    import json

    return json.dumps(obj).encode()


def test_maf_archive_members_are_extracted_in_ffjord_layout(tmp_path):
    import tarfile

    raw = RNG.normal(size=(30, 3))
    (tmp_path / "src" / "data" / "miniboone").mkdir(parents=True)
    np.save(tmp_path / "src" / "data" / "miniboone" / "data.npy", raw)
    with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "data", arcname="data")
    ds = data.miniboone(tmp_path, download=False, verify=False)
    assert (tmp_path / "miniboone" / "data.npy").is_file() and ds.dim == 3
    with pytest.raises(DataCorrupt, match=r"data\.tar\.gz is truncated or corrupt: members \['data/gas/eth"):
        data.gas(tmp_path, download=False, verify=False)


# ------------------------------------------------------------------------------ registry

def test_registry_lists_loads_and_reports_availability(tmp_path):
    assert data.names("image") == ("digits", "mnist", "cifar10", "svhn")
    assert data.names("timeseries") == ("japanese-vowels", "char-traj", "art-wr", "spo-ad")
    assert set(data.names("density")) == {"8gaussians", "moons", "checkerboard", "pinwheel", "2spirals", "rings",
                                          "breast-cancer", "miniboone", "gas", "power", "hepmass", "bsds300"}
    assert "image/mnist" in data.names() and set(data.DATASETS) == {"image", "timeseries", "density"}
    assert data.is_available("image", "digits", tmp_path) and data.is_available("density", "moons", tmp_path)
    assert not data.is_available("image", "mnist", tmp_path)
    write_mnist(tmp_path)
    assert data.is_available("image", "mnist", tmp_path)
    ds = data.load("image", "mnist", data_dir=tmp_path, download=False, verify=False, normalize=False)
    assert ds.name == "mnist" and ds.sizes == {"train": 12, "test": 5}
    assert data.load("density", "moons", n_train=7, n_test=3).sizes == {"train": 7, "test": 3}


def test_registry_offline_datasets_are_the_ones_the_messages_name():
    offline = {t: tuple(n for n, s in d.items() if s.offline) for t, d in data.DATASETS.items()}
    assert offline == {"image": ("digits",), "timeseries": ("japanese-vowels",),
                       "density": ("8gaussians", "moons", "checkerboard", "pinwheel", "2spirals", "rings",
                                   "breast-cancer")}
    hint = registry.offline_hint()
    for task, names in offline.items():
        assert f"{task}: {', '.join(names)}" in hint


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown image dataset 'imagenet'; valid names: digits, mnist, cifar10, svhn"):
        data.load("image", "imagenet")
    with pytest.raises(ValueError, match="Unknown task 'audio'; valid tasks: image, timeseries, density"):
        data.load("audio", "x")
    with pytest.raises(ValueError, match="Unknown task 'audio'; valid tasks"):
        data.names("audio")
    with pytest.raises(ValueError, match="Unknown density dataset 'cifar10'; valid names: 8gaussians"):
        data.is_available("density", "cifar10")


def test_dataset_checks_kind_and_dtypes():
    x, y = torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="Dataset kind must be one of"):
        data.Dataset("t", "audio", x, y, x, y)
    with pytest.raises(ValueError, match="x_train must be float32, got torch.float64"):
        data.Dataset("t", "image", x.double(), y, x, y)
    with pytest.raises(ValueError, match="y_test must be int64 with one label per row of x_test"):
        data.Dataset("t", "image", x, y, x, y[:2])


def test_optional_dependency_error_names_the_package():
    with pytest.raises(ImportError, match="needs the optional package 'no-such-pkg': pip install no-such-pkg"):
        files.optional("no_such_module_for_nodeopt", "no-such-pkg")


def test_japanese_vowels_missing_from_aeon_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(timeseries, "aeon_bundled_dir", lambda: tmp_path)
    with pytest.raises(DataUnavailable, match=r"JapaneseVowels_TRAIN\.ts, which is not on disk, and this aeon "
                                              r"installation does not ship it"):
        data.japanese_vowels()


def test_archive_members_may_not_leave_the_data_directory(tmp_path):
    import tarfile

    (tmp_path / "evil.txt").write_text("x")
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        tar.add(tmp_path / "evil.txt", arcname="../evil.txt")
    (tmp_path / "root").mkdir()
    with pytest.raises(DataCorrupt, match=r"bad\.tar .*member '\.\./evil\.txt' would leave"):
        files.extract_members(tmp_path / "bad.tar", tmp_path / "root", {"../evil.txt": "../evil.txt"})


def test_progress_bar_only_on_a_terminal(monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert isinstance(files._progress(10, "f"), files._NoBar)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = files._progress(10, "f")
    assert isinstance(bar, tqdm.tqdm)
    bar.close()
