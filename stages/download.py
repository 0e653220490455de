"""Stage `download`: fetch the archive named by data.url into data/raw/ and verify its md5.

data.url may be an http(s) URL (downloaded with torchvision's utility, with a progress bar),
a file:// URL or a plain local path (copied). Nothing is left at the output path unless the
md5 matches.
"""
import shutil
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse
from urllib.request import url2pathname

from torchvision.datasets.utils import calculate_md5, download_url

from lenet_mixup.params import load_params
from lenet_mixup.paths import RAW_ARCHIVE
from lenet_mixup.stage import UserError, atomic_output, run

OFFLINE_HINT = ("on a machine without internet access, build or copy the archive locally and run "
                "`dvc exp run -S data.url=/path/cifar-10-python.tar.gz -S data.md5=<its md5>` (README: Offline use)")


def fetch(url, dest):
    """Put the file at `url` (http(s), file:// or a local path) at `dest`."""
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        try:
            # md5=None here: we verify below ourselves, to name both checksums in the error.
            download_url(url, root=str(dest.parent), filename=dest.name, md5=None)
        except (URLError, OSError, RuntimeError) as e:
            raise UserError(f"could not download {url} ({e}); {OFFLINE_HINT}") from None
        return
    source = Path(url2pathname(urlparse(url).path)) if scheme == "file" else Path(url)
    if not source.is_file():
        raise UserError(f"data.url {url!r} is not a file; set data.url to the archive's path or URL")
    shutil.copyfile(source, dest)


def main():
    data = load_params("data")["data"]
    with atomic_output(RAW_ARCHIVE) as tmp:
        fetch(data["url"], tmp)
        if data["md5"] is not None:
            actual = calculate_md5(str(tmp))
            if actual != data["md5"]:
                raise UserError(f"md5 mismatch for {data['url']}: expected {data['md5']} (data.md5), got {actual}. "
                                "This file is not the archive data.md5 names: another file, a damaged download "
                                "or a tampered copy, so nothing was kept. Only if you chose this archive on "
                                f"purpose, accept it with `dvc exp run -S data.md5={actual}` (or edit params.yaml); "
                                "otherwise fix data.url")
            print(f"md5 ok: {actual}")
    print(f"wrote {RAW_ARCHIVE} ({RAW_ARCHIVE.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    run(main)
