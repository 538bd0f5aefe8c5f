"""A fake HTTPS (and plain HTTP) upstream for the egress proxy tests: it records every
request it receives (one JSON line each: method, path with query, headers, body) and
answers like the APIs the clients expect, echoing credentials back where asked.

    python upstream.py CERT KEY LOG [STATIC]   prints "https=PORT http=PORT" once listening

Routes:
  POST /v1/chat/completions  OpenAI chat completion; SSE chunks when the body says stream
  POST /v1/messages          Anthropic message
  GET  /echo                 the Authorization / x-api-key / query back, in a header and JSON
  GET  /echo-gzip            the same JSON, gzip-compressed whatever the client asked for
  GET  /echo-sse             the Authorization value in an SSE stream, split across chunks
  GET  /echo-b64             the bearer token base64- and hex-encoded in JSON
  GET  /echo-forms           the bearer token inside longer base64 texts (basic auth, "Bearer
                             KEY", URL-safe at another alignment), JSON \\u00XX-escaped and
                             percent-encoded, in JSON and in headers
  GET  /echo-coded?enc=A,B   the /echo JSON with each content coding of the list applied in
                             order (identity, gzip, deflate; br and zstd are only named), each
                             its own content-encoding line when &lines=1
  GET  /hold?guess=G         "data: G" at once, then (after a second) a blank line: what a
                             proxy passes on before the pause is what it did not hold back
  GET  /echo-trailers       a chunked body whose trailers echo the Authorization: as it is
                             (x-echo) and percent-encoded (grpc-message)
  GET  /stream?n=N           N one-KiB chunks of 'a', flushed one by one
  GET  /timed?n=N&gap=S&end=nl|word
                             N events S seconds apart, each carrying the time it was sent:
                             SSE events ending in a blank line, or bare words ending in
                             digits (a token stream that ends each chunk mid-word)
  GET  /cut                  promises 1 MiB and closes after 10 KiB
  GET  /ws                   WebSocket: sends the Authorization it saw, then echoes frames
  GET  /ws-echoes            WebSocket that echoes the bearer token everywhere: in a header of
                             its 101, a text frame, a message fragmented inside the token with a
                             ping between the fragments, then (after one echoed message) in
                             its close frame's reason
  GET  /repo.git/...         files under STATIC (a bare repository for git's dumb HTTP),
                             401 with a basic-auth challenge until a request has credentials
  POST /reverse              JSON or form body {api_key, text}: the text reversed; 401
                             unless api_key is one of the keys in the file `keys` beside LOG
  POST /store                the same auth; keeps every field of the body, answers {id}
  GET  /store/ID             what was kept under ID, as JSON (no auth: a paste bin)
  GET  /reflect              the x-reflect header reversed; 401 unless x-api-key is a key
  anything else              {"ok": true, "path": ...}

Like the frameworks that honour them, it takes X-HTTP-Method-Override (on POST) and
X-Original-URL as the request's method and path, and records them as effective_method and
effective_path.
"""

import base64
import gzip
import hashlib
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


LOCK = threading.Lock()
STORE = {}  # /store: id -> the fields of the body that stored them (both listeners share it)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def effective(self):
        """The method and path a framework honouring the override headers would act on."""
        method = self.command
        if method == "POST" and self.headers.get("x-http-method-override"):
            method = self.headers["x-http-method-override"].upper()
        return method, self.headers.get("x-original-url") or self.path

    def record(self, body):
        method, path = self.effective()
        entry = {
            "method": self.command,
            "path": self.path,
            "effective_method": method,
            "effective_path": path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "tls": isinstance(self.connection, ssl.SSLSocket),
        }
        with LOCK, open(self.server.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def read_body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def seen(self):
        q = self.path.split("?", 1)[1] if "?" in self.path else ""
        return {
            "authorization": self.headers.get("authorization"),
            "x-api-key": self.headers.get("x-api-key"),
            "query": q,
        }

    def do_GET(self):
        self.handle_any()

    def do_POST(self):
        self.handle_any()

    def do_PUT(self):
        self.handle_any()

    def do_DELETE(self):
        self.handle_any()

    def do_PATCH(self):
        self.handle_any()

    def keys(self):
        """The keys a request must carry, as the test wrote them beside the log."""
        try:
            with open(os.path.join(os.path.dirname(self.server.log_path), "keys")) as f:
                return {line.strip() for line in f if line.strip()}
        except FileNotFoundError:
            return set()

    def fields(self, body):
        """The fields of a JSON object or form body, as the API would parse them; None else."""
        ctype = (self.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                doc = json.loads(body)
            except ValueError:
                return None
            return doc if isinstance(doc, dict) else None
        if ctype == "application/x-www-form-urlencoded":
            return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(), keep_blank_values=True).items()}
        return None

    def unauthorized(self):
        return self.send(401, json.dumps({"error": {"message": "invalid api key"}}).encode())

    def handle_any(self):
        body = self.read_body()
        self.record(body)
        path = self.path.split("?", 1)[0]
        if path == "/v1/chat/completions":
            return self.chat(json.loads(body or b"{}"))
        if path == "/v1/messages":
            msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
                   "content": [{"type": "text", "text": "hello from the fake upstream"}],
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": 1, "output_tokens": 5}}
            return self.send(200, json.dumps(msg).encode())
        if path == "/echo":
            seen = json.dumps(self.seen()).encode()
            return self.send(200, seen, extra=[("x-echo", self.headers.get("authorization") or "")])
        if path == "/echo-gzip":
            return self.send(200, gzip.compress(json.dumps(self.seen()).encode()),
                             extra=[("content-encoding", "gzip")])
        if path == "/echo-b64":
            token = (self.headers.get("authorization") or "").removeprefix("Bearer ").encode()
            return self.send(200, json.dumps({"b64": base64.b64encode(token).decode(),
                                              "hex": token.hex()}).encode())
        if path == "/echo-forms":
            token = (self.headers.get("authorization") or "").removeprefix("Bearer ").encode()
            b64 = lambda b: base64.b64encode(b).decode()
            basic = "Basic " + b64(b"x-access-token:" + token)
            # Written by hand: json.dumps leaves ASCII unescaped.
            body = ("{" + ", ".join([
                '"b64_bearer": "%s"' % b64(b"Bearer " + token),
                '"basic": "%s"' % basic,
                '"url_at_1": "%s"' % base64.urlsafe_b64encode(b"u" + token).decode().rstrip("="),
                '"json_u": "%s"' % "".join("\\u%04x" % c for c in token),
                '"json_U": "Bearer %s"' % "".join("\\u%04X" % c for c in token),
                '"pct": "%s"' % "".join("%%%02X" % c for c in token),
                '"pct_lower": "t=%s&x=1"' % "".join("%%%02x" % c for c in token),
                '"hex": "%s"' % token.hex(),
            ]) + "}").encode()
            return self.send(200, body, extra=[("x-echo-basic", basic),
                                               ("x-echo-pct", "".join("%%%02X" % c for c in token))])
        if path == "/echo-coded":
            codings = self.path.split("enc=", 1)[1].split("&")[0].split(",")
            body = json.dumps(self.seen()).encode()
            for c in codings:
                if c == "gzip":
                    body = gzip.compress(body)
                elif c == "deflate":
                    body = zlib.compress(body)
            if "lines=1" in self.path:
                extra = [("content-encoding", c) for c in codings]
            else:
                extra = [("content-encoding", ", ".join(codings))]
            return self.send(200, body, extra=extra)
        if path == "/hold":
            guess = self.path.split("guess=", 1)[1].encode()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.chunk(b"data: " + guess)
            time.sleep(1.0)
            self.chunk(b"\n\n")
            self.chunk(b"")
            return
        if path == "/echo-sse":
            auth = (self.headers.get("authorization") or "").encode()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            line = b"data: " + auth + b"\n\n"
            half = len(line) // 2
            self.chunk(line[:half])
            time.sleep(0.05)
            self.chunk(line[half:])
            self.chunk(b"data: done\n\n")
            self.chunk(b"")
            return
        if path == "/timed":
            q = dict(kv.split("=", 1) for kv in self.path.split("?", 1)[1].split("&"))
            n, gap, end = int(q["n"]), float(q["gap"]), q["end"]
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(n):
                if end == "nl":
                    self.chunk(b'data: {"i": %d, "t": %.6f}\n\n' % (i, time.time()))
                else:
                    self.chunk(b"data: %d %.6f" % (i, time.time()))
                time.sleep(gap)
            self.chunk(b"")
            return
        if path == "/echo-trailers":
            auth = self.headers.get("authorization") or ""
            pct = "".join("%%%02X" % c for c in auth.encode())
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("transfer-encoding", "chunked")
            self.send_header("trailer", "x-echo, grpc-message")
            self.end_headers()
            self.chunk(b"body\n")
            self.wfile.write(("0\r\nx-echo: %s\r\ngrpc-message: %s\r\n\r\n" % (auth, pct)).encode())
            self.wfile.flush()
            return
        if path == "/stream":
            n = int(self.path.split("n=", 1)[1]) if "n=" in self.path else 8
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for _ in range(n):
                self.chunk(b"a" * 1024)
            self.chunk(b"")
            return
        if path == "/cut":
            self.send_response(200)
            self.send_header("content-length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"b" * 10240)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if path == "/ws":
            return self.websocket()
        if path in ("/reverse", "/store") and self.command == "POST":
            fields = self.fields(body)
            if fields is None or fields.get("api_key") not in self.keys():
                return self.unauthorized()
            if path == "/reverse":
                return self.send(200, json.dumps({"reversed": str(fields.get("text", ""))[::-1]}).encode())
            with LOCK:
                id_ = str(len(STORE) + 1)
                STORE[id_] = fields
            return self.send(201, json.dumps({"id": id_}).encode())
        if path.startswith("/store/"):
            with LOCK:
                kept = STORE.get(path.removeprefix("/store/"))
            if kept is None:
                return self.send(404, b'{"error": "not found"}')
            return self.send(200, json.dumps(kept).encode())
        if path == "/reflect":
            if self.headers.get("x-api-key") not in self.keys():
                return self.unauthorized()
            return self.send(200, json.dumps({"reflected": (self.headers.get("x-reflect") or "")[::-1]}).encode())
        if path == "/ws-echoes":
            return self.websocket_echoes()
        if path.startswith("/repo.git/") and self.server.static_dir:
            if not self.headers.get("authorization"):
                return self.send(401, b"credentials required\n", "text/plain",
                                 extra=[("www-authenticate", 'Basic realm="git"')])
            file = os.path.realpath(os.path.join(self.server.static_dir, path.lstrip("/")))
            if not file.startswith(self.server.static_dir) or not os.path.isfile(file):
                return self.send(404, b"not found\n", "text/plain")
            with open(file, "rb") as f:
                return self.send(200, f.read(), "application/octet-stream")
        method, effective = self.effective()
        return self.send(200, json.dumps({"ok": True, "path": self.path, "method": method,
                                          "effective_path": effective}).encode())

    def chat(self, req):
        base = {"id": "chatcmpl-1", "created": 0, "model": req.get("model", "gpt-test")}
        if not req.get("stream"):
            out = dict(base, object="chat.completion", choices=[{
                "index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hello from the fake upstream"}}],
                usage={"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6})
            return self.send(200, json.dumps(out).encode())
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i, piece in enumerate(["hello ", "from the ", "stream"]):
            chunk = dict(base, object="chat.completion.chunk", choices=[{
                "index": 0, "delta": {"content": piece} if i else {"role": "assistant", "content": piece},
                "finish_reason": None}])
            self.chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        last = dict(base, object="chat.completion.chunk",
                    choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
        self.chunk(b"data: " + json.dumps(last).encode() + b"\n\n")
        self.chunk(b"data: [DONE]\n\n")
        self.chunk(b"")

    def accept_websocket(self, extra=()):
        key = self.headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept.decode())
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def websocket_echoes(self):
        token = (self.headers.get("authorization") or "").removeprefix("Bearer ").encode()
        self.accept_websocket([("x-echo", "Bearer " + token.decode())])
        ws_send(self.wfile, b"Bearer " + token)
        long = b"key=" + token + b" end"
        third = len(long) // 3
        ws_send(self.wfile, long[:third], first=0x01)          # text, not final
        ws_send(self.wfile, b"ping " + token[:4], first=0x89)  # a ping between fragments
        ws_send(self.wfile, long[third:2 * third], first=0x00)  # continuation
        ws_send(self.wfile, long[2 * third:], first=0x80)       # continuation, final
        while True:
            head = self.rfile.read(1)
            if not head:
                return
            opcode = head[0] & 0x0F
            data = ws_recv(self.rfile, head)
            if opcode == 0xA:  # the client's pong to our ping
                continue
            break
        if data is not None:
            ws_send(self.wfile, b"echo:" + data)
        reason = b"bye " + token
        self.wfile.write(bytes([0x88, 2 + len(reason)]) + (4000).to_bytes(2, "big") + reason)
        self.wfile.flush()
        ws_recv(self.rfile)  # the client's close
        self.close_connection = True

    def websocket(self):
        self.accept_websocket()
        ws_send(self.wfile, (self.headers.get("authorization") or "").encode())
        while True:
            data = ws_recv(self.rfile)
            if data is None:
                self.wfile.write(bytes([0x88, 0]))  # close, answered
                self.wfile.flush()
                self.close_connection = True
                return
            ws_send(self.wfile, b"echo:" + data)


def ws_send(w, data, first=0x81):
    """One unmasked frame (server to client): a whole text message unless told."""
    header = bytes([first])
    n = len(data)
    header += bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big")
    w.write(header + data)
    w.flush()


def ws_recv(r, first=b""):
    """One masked frame (client to server), its first byte maybe read already; None on
    close."""
    head = first + r.read(2 - len(first))
    if len(head) < 2 or head[0] & 0x0F == 0x8:
        return None
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(r.read(2), "big")
    elif n == 127:
        n = int.from_bytes(r.read(8), "big")
    mask = r.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = r.read(n)
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that go away mid-answer are what the fault tests do


def main():
    cert, key, log = sys.argv[1:4]
    static = os.path.realpath(sys.argv[4]) if len(sys.argv) > 4 else None
    tls = Server(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    plain = Server(("127.0.0.1", 0), Handler)
    for s in (tls, plain):
        s.log_path = log
        s.static_dir = static
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(f"https={tls.server_address[1]} http={plain.server_address[1]}", flush=True)
    sys.stdin.read()  # until the test closes stdin (or dies)


if __name__ == "__main__":
    main()
