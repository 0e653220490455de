"""Minmax and reading the official archive layout."""
import numpy as np
import pytest

from lenet_mixup.cifar import minmax, read_archive
from lenet_mixup.stage import UserError
from tests.helpers import CLASSES, RunsACommand, synthetic_split, truncate, write_archive


def test_minmax_per_image_over_all_channels():
    rng = np.random.default_rng(0)
    images = rng.integers(10, 200, size=(4, 3, 32, 32)).astype(np.uint8)
    out = minmax(images)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out.min(axis=(1, 2, 3)), 0)
    np.testing.assert_allclose(out.max(axis=(1, 2, 3)), 1)
    # One statistic per image, not per channel: a channel's own range does not reach [0, 1].
    first = images[0].astype(np.float32)
    np.testing.assert_allclose(out[0], (first - first.min()) / (first.max() - first.min()), rtol=1e-6)


def test_minmax_constant_image_gives_zeros():
    out = minmax(np.full((2, 3, 32, 32), 77, dtype=np.uint8))
    assert out.dtype == np.float32
    assert not np.isnan(out).any() and (out == 0).all()


def test_archive_shapes_labels_and_classes(tmp_path):
    train, evaluation = synthetic_split(50, 0), synthetic_split(20, 1)
    write_archive(tmp_path / "a.tar.gz", train, evaluation)
    train_x, train_y, eval_x, eval_y, classes = read_archive(tmp_path / "a.tar.gz")
    assert train_x.shape == (50, 3, 32, 32) and train_x.dtype == np.uint8
    assert eval_x.shape == (20, 3, 32, 32)
    assert train_y.dtype == np.int64 and train_y.tolist() == train[1]
    assert eval_y.tolist() == evaluation[1]
    assert classes == CLASSES


def test_channel_order_a_known_pixel_lands_where_it_should(tmp_path):
    data = np.zeros((10, 3072), dtype=np.uint8)
    # Row layout: 1024 red, then 1024 green, then 1024 blue, each 32x32 row-major.
    data[3, 1024 + 5 * 32 + 7] = 200   # green, row 5, column 7 of image 3
    data[3, 2048 + 31 * 32 + 0] = 99   # blue, row 31, column 0
    write_archive(tmp_path / "a.tar.gz", (data, list(range(10))), (data[:5], list(range(5))))
    train_x, *_ = read_archive(tmp_path / "a.tar.gz")
    assert train_x[3, 1, 5, 7] == 200 and train_x[3, 2, 31, 0] == 99
    assert train_x.sum() == 299


@pytest.mark.parametrize("labels, message", [([0] * 9 + [10], "labels must lie in 0..9"),
                                             ([-1] + [0] * 9, "labels must lie in 0..9"),
                                             ([0] * 9, "10 images but 9 labels")])
def test_bad_labels_are_rejected(tmp_path, labels, message):
    data = np.zeros((10, 3072), dtype=np.uint8)
    write_archive(tmp_path / "a.tar.gz", overrides={"data_batch_2": {b"data": data, b"labels": labels}})
    with pytest.raises(UserError, match=message):
        read_archive(tmp_path / "a.tar.gz")


def test_bad_image_shape_is_rejected(tmp_path):
    write_archive(tmp_path / "a.tar.gz", overrides={"test_batch": {b"data": np.zeros((4, 1024), np.uint8),
                                                                  b"labels": [0, 1, 2, 3]}})
    with pytest.raises(UserError, match=r"test_batch: 'data' must be uint8 N x 3072"):
        read_archive(tmp_path / "a.tar.gz")


def test_missing_batch_is_named(tmp_path):
    write_archive(tmp_path / "a.tar.gz", skip={"data_batch_4"})
    with pytest.raises(UserError, match="no cifar-10-batches-py/data_batch_4"):
        read_archive(tmp_path / "a.tar.gz")


def test_truncated_archive_is_reported(tmp_path, tiny_archive):
    broken = truncate(tiny_archive[0], tmp_path / "broken.tar.gz")
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_archive(broken)


def test_not_a_gzip_file_is_reported(tmp_path):
    (tmp_path / "x.tar.gz").write_text("<html>not found</html>")
    with pytest.raises(UserError, match="not a readable .tar.gz"):
        read_archive(tmp_path / "x.tar.gz")


@pytest.mark.parametrize("member, payload, named", [
    ("data_batch_3", lambda m: {b"data": RunsACommand(m), b"labels": [0]}, "posix.system"),
    ("batches.meta", lambda m: {"label_names": CLASSES, "x": RunsACommand(m)}, "posix.system"),
    ("test_batch", lambda m: {b"data": np.zeros((2, 3072), np.float64), b"labels": [0, 1]}, "dtype 'f8'"),
    ("test_batch", lambda m: {b"data": np.array([RunsACommand(m)], dtype=object), b"labels": [0]}, "dtype 'O8'"),
])
def test_an_archive_that_would_run_code_is_refused(tmp_path, member, payload, named):
    marker = tmp_path / "ran"
    write_archive(tmp_path / "a.tar.gz", overrides={member: payload(marker)})
    with pytest.raises(UserError) as error:
        read_archive(tmp_path / "a.tar.gz")
    message = str(error.value)
    assert f"cifar-10-batches-py/{member} holds" in message and named in message and "\n" not in message
    assert "refusing to load it" in message
    assert not marker.exists()


def test_the_official_python_2_pickles_still_load(tmp_path):
    """The official batches were written by Python 2's cPickle and name numpy.core, not numpy._core."""
    import io
    import pickle
    import tarfile
    batch = pickle.dumps({b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251, b"labels": [3, 4]},
                         protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    write_archive(tmp_path / "a.tar.gz")
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    members["cifar-10-batches-py/data_batch_1"] = batch
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    train_x, train_y, *_ = read_archive(tmp_path / "b.tar.gz")
    assert train_x[0, 0, 0, :3].tolist() == [0, 1, 2] and train_y[:2].tolist() == [3, 4]
