"""download_file and the download command, against a local HTTP server on 127.0.0.1."""
import gzip
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import data
import runtime
from config import UserError

BODY = gzip.compress(b"\n".join(json.dumps({"url": f"u{i}", "text": f"doc {i}", "timestamp": "t"}).encode()
                                for i in range(300)))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        srv.ranges.append(self.headers.get("Range"))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") and srv.support_range else None
        self.send_response(200 if start is None else 206)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if getattr(srv, "truncate", False) else body)  # the connection drops

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.ranges, srv.support_range = {"/f.json.gz": BODY}, [], True
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_download_command_fetches_train_and_val_shards(server, tmp_path):
    names = [f"c4-train.{i:05d}-of-01024.json.gz" for i in (3, 4)] + ["c4-validation.00000-of-00008.json.gz"]
    server.files = {f"/en/{n}": BODY + n.encode() for n in names}
    data.download(data.DownloadConfig(out_dir=str(tmp_path), n_train=2, n_val=1, start=3, base_url=server.url + "/en"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert all((tmp_path / n).read_bytes() == BODY + n.encode() for n in names)


def test_download_resumes_a_partial_file_with_a_range_request(server, tmp_path):
    (tmp_path / "f.json.gz.part").write_bytes(BODY[:1000])
    runtime.download_file(server.url + "/f.json.gz", str(tmp_path / "f.json.gz"))
    assert server.ranges == ["bytes=1000-"] and (tmp_path / "f.json.gz").read_bytes() == BODY


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    server.support_range = False
    (tmp_path / "f.json.gz.part").write_bytes(b"stale bytes that must not stay")
    runtime.download_file(server.url + "/f.json.gz", str(tmp_path / "f.json.gz"))
    assert (tmp_path / "f.json.gz").read_bytes() == BODY


def test_download_skips_a_finished_file(server, tmp_path):
    (tmp_path / "f.json.gz").write_bytes(BODY)
    runtime.download_file(server.url + "/f.json.gz", str(tmp_path / "f.json.gz"), sha256=hashlib.sha256(BODY).hexdigest())
    assert server.ranges == []


def test_download_404_names_the_url(server, tmp_path):
    with pytest.raises(UserError, match=f"{server.url}/missing.json.gz.*404"):
        runtime.download_file(server.url + "/missing.json.gz", str(tmp_path / "m.json.gz"))


def test_download_refuses_a_sha256_mismatch(server, tmp_path):
    with pytest.raises(UserError, match="sha256"):
        runtime.download_file(server.url + "/f.json.gz", str(tmp_path / "f.json.gz"), sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_task_download_command_fetches_official_files(server, tmp_path, monkeypatch):
    import tasks
    rows = b'{"question": "What is 2+3?", "answer": "2+3=5\\n#### 5"}\n'
    server.files.update({"/gsm8k/train.jsonl": rows, "/gsm8k/test.jsonl": rows})  # a mirror: TASK/<official name>
    monkeypatch.setitem(tasks.SHA256, "gsm8k/train.jsonl", hashlib.sha256(rows).hexdigest())
    monkeypatch.setitem(tasks.SHA256, "gsm8k/test.jsonl", "0" * 64)
    fetch = ["download", "--task=gsm8k", f"--out_dir={tmp_path}", f"--base_url={server.url}"]
    tasks.main(fetch + ["--splits=train"])
    [ex] = tasks.load_task("gsm8k", str(tmp_path / "gsm8k" / "train.jsonl"))
    assert ex.answers == ["5"]
    with pytest.raises(UserError, match="sha256"):  # a file that is not the official one is refused
        tasks.main(fetch + ["--splits=eval"])
    assert not (tmp_path / "gsm8k" / "test.jsonl").exists()
