"""A create whose answer is lost after the real API server accepted it (issue 15).

Between the operator and the real kube-apiserver sits a TLS proxy that forwards every
request unchanged (watches streamed) except one: the first POST of a Deployment is
forwarded, the server creates the object, and the proxy drops the connection instead
of answering. The operator must not send the POST again (not idempotent) and must not
call its own object "not managed": it looks (GET), finds its managed-by label and
applied-hash annotation, and reports and audits a create.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.parse

import pytest

from operator_harness import wait_for


class Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, upstream_ctx: ssl.SSLContext, cert: str, key: str):
        super().__init__(("127.0.0.1", 0), Handler)
        u = urllib.parse.urlparse(upstream)
        self.upstream = (u.hostname, u.port)
        self.upstream_ctx = upstream_ctx
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.lock = threading.Lock()
        self.posts = []          # paths of the Deployment POSTs seen
        self.dropped = 0         # answers dropped
        self.drop_next_post = True
        self.failures = []       # (method, path, status, body) of answers >= 400, for messages


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _forward(self):
        srv: Proxy = self.server
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "connection", "content-length", "accept-encoding")}
        conn = http.client.HTTPSConnection(*srv.upstream, context=srv.upstream_ctx, timeout=600)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        drop = False
        if self.command == "POST" and "/deployments" in self.path:
            with srv.lock:
                srv.posts.append(self.path)
                drop, srv.drop_next_post = srv.drop_next_post, False
        if drop:
            resp.read()  # the server created it; the answer never reaches the operator
            with srv.lock:
                srv.dropped += 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        if "watch=" in self.path:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while chunk := resp.read1(65536):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
        else:
            data = resp.read()
            if resp.status >= 400:
                with srv.lock:
                    srv.failures.append((self.command, self.path, resp.status, data[:600], body[:300] if body else b""))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


@pytest.fixture
def proxy(cluster, tmp_path):
    cfg = cluster.kubectl_json("config", "view", "--raw")
    cl = cfg["clusters"][0]["cluster"]
    upstream_ctx = ssl.create_default_context(cadata=base64.b64decode(cl["certificate-authority-data"]).decode())
    cert, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    p = Proxy(cl["server"], upstream_ctx, str(cert), str(key))
    t = threading.Thread(target=p.serve_forever, daemon=True)
    t.start()
    # The operator's kubeconfig: the proxy, trusted by its own certificate.
    shutil.copy(cluster.kubeconfig, tmp_path / "kubeconfig")
    cl["server"] = f"https://127.0.0.1:{p.server_address[1]}"
    cl["certificate-authority-data"] = base64.b64encode(cert.read_bytes()).decode()
    (tmp_path / "kubeconfig").write_text(json.dumps(cfg))
    p.kubeconfig = str(tmp_path / "kubeconfig")
    yield p
    p.shutdown()
    p.server_close()


def test_create_whose_answer_was_lost_is_recognised_as_created(pg, cluster, namespace, migrated_db, proxy):
    from operator_harness import Operator
    op = Operator.start(database_url=migrated_db, kubeconfig=proxy.kubeconfig, namespace=namespace,
                        env={"KUBE_TIMEOUT_MS": "5000"})
    try:
        op.wait_ready()
        pg.psql("insert into airbnb.accounts (account_id, airbnb_cookie, x_client_version, user_agent, is_active)"
                " values ('8201', 'SECRET-c-8201-zq', 'v1', 'ua', true)", url=migrated_db)

        def audited():
            out = pg.psql("select coalesce(string_agg(action || ':' || reason, ' | ' order by id), '') from "
                          "sync_airbnb_operator.audit_log where account_id = '8201'", url=migrated_db).stdout
            return out.strip()
        wait_for(lambda: audited().startswith("create:"), 30, lambda: (audited(), op.raw_log()[-3000:]))
        assert proxy.dropped == 1
        assert len(proxy.posts) == 1, f"the POST was sent again: {proxy.posts}"
        d = json.loads(cluster.kubectl("get", "deployment", "sync-airbnb-worker-8201", "-o", "json",
                                       namespace=namespace).stdout)
        assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sync-airbnb-operator"
        assert audited() == "create:active account has no worker"
        assert not [r for r in op.logs() if r.get("msg") == "error"]
        events = cluster.kubectl_json("get", "events", namespace=namespace)["items"]
        assert not [e for e in events if e.get("type") == "Warning"], events
    finally:
        assert op.stop() == 0, op.raw_log()[-3000:]
