"""The --download path against a local HTTP server on 127.0.0.1 serving fake archives."""

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest
from conftest import write_cifar

from cifarlab.data import DataError, download_cifar10, find_data, load_data


def make_archive(tmp_path: Path, evil: bool = False) -> bytes:
    src = write_cifar(tmp_path / "src", per_batch=20, test=20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
        if evil:
            info = tarfile.TarInfo("../escaped.txt")
            payload = b"gotcha"
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.fixture
def server():
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield files, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_good_download(server, tmp_path):
    files, base = server
    blob = make_archive(tmp_path)
    files["/c.tar.gz"] = blob
    dest = tmp_path / "dl"
    folder = find_data(dest, download=True, url=base + "/c.tar.gz",
                       md5=hashlib.md5(blob).hexdigest(), size=len(blob))
    assert folder == dest / "cifar-10-batches-py"
    d = load_data(dest)
    assert len(d.train) == 100 and len(d.test) == 20
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temp files left


def test_bad_md5(server, tmp_path):
    files, base = server
    blob = make_archive(tmp_path)
    files["/c.tar.gz"] = blob
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match="md5"):
        download_cifar10(dest, url=base + "/c.tar.gz", md5="0" * 32, size=len(blob))
    assert list(dest.iterdir()) == []


def test_truncated(server, tmp_path):
    files, base = server
    blob = make_archive(tmp_path)
    files["/c.tar.gz"] = blob[: len(blob) // 2]
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match="truncated"):
        download_cifar10(dest, url=base + "/c.tar.gz", md5=hashlib.md5(blob).hexdigest(),
                         size=len(blob))
    assert list(dest.iterdir()) == []


def test_path_escape_refused(server, tmp_path):
    files, base = server
    blob = make_archive(tmp_path, evil=True)
    files["/c.tar.gz"] = blob
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match="outside target"):
        download_cifar10(dest, url=base + "/c.tar.gz", md5=hashlib.md5(blob).hexdigest(),
                         size=len(blob))
    assert not (tmp_path / "escaped.txt").exists()
    assert not (dest / "cifar-10-batches-py").exists()


def test_http_error(server, tmp_path):
    _, base = server
    with pytest.raises(DataError, match="download of .* failed"):
        download_cifar10(tmp_path / "dl", url=base + "/missing.tar.gz", md5="0" * 32, size=None)


def test_no_download_without_flag(tmp_path):
    with pytest.raises(DataError, match="--download"):
        find_data(tmp_path / "empty")
