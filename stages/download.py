"""Stage `download`: fetch the archive named by data.url into data/raw/ and verify its md5.

data.url may be an http(s) URL (downloaded with a progress bar), a file:// URL or a plain local
path (copied). Nothing is left at the output path unless the md5 matches. The standard library does
it all: fetching one file needs no torch (whose import alone takes about 2 s).
"""
import hashlib
import shutil
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse
from urllib.request import url2pathname, urlopen

from tqdm import tqdm

from lenet_mixup.params import load_params
from lenet_mixup.paths import RAW_ARCHIVE
from lenet_mixup.stage import UserError, atomic_output, run

OFFLINE_HINT = ("on a machine without internet access, build or copy the archive locally and run "
                "`dvc exp run -S data.url=/path/cifar-10-python.tar.gz -S data.md5=<its md5>` (docs/offline.md)")


def fetch(url, dest):
    """Put the file at `url` (http(s), file:// or a local path) at `dest`."""
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        response = network(url, lambda: urlopen(url, timeout=60))
        size = int(response.headers.get("Content-Length") or 0) or None
        with response, open(dest, "wb") as out, tqdm(total=size, unit="B", unit_scale=True, desc="download") as bar:
            while chunk := network(url, lambda: response.read(1 << 20)):
                bar.update(out.write(chunk))  # a write error (a full disk) is not the network's: it is not caught
        return
    source = Path(url2pathname(urlparse(url).path)) if scheme == "file" else Path(url)
    if not source.is_file():
        raise UserError(f"data.url {url!r} is not a file; set data.url to the archive's path or URL")
    shutil.copyfile(source, dest)


def network(url, call):
    """call(), a network operation on `url`; its failure becomes one line that says what to do."""
    try:
        return call()
    except (URLError, OSError, ValueError) as e:
        raise UserError(f"could not download {url} ({e}); {OFFLINE_HINT}") from None


def md5_of(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main():
    data = load_params("data")["data"]
    with atomic_output(RAW_ARCHIVE) as tmp:
        fetch(data["url"], tmp)
        if data["md5"] is not None:
            actual = md5_of(tmp)
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
