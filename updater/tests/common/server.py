#!/usr/bin/env python3
"""Test servers for abup's network tests: real sockets, python's own http.server and ssl.

    server.py files DIR [--tls CERT KEY] [--client-ca CA] [--header 'Name: value']
                        [--ranges] [--fail N STATUS] [--redirect URL] [--drop BYTES]...
                        [--stall SECONDS] --log FILE
    server.py proxy --log FILE [--tls CERT KEY]

`files` serves DIR as python's http.server does: it ignores Range requests (answers 200 with
the whole file) unless --ranges is given. --tls serves https; --client-ca requires a client
certificate signed by CA; --header requires that header (401 without it); --fail answers the
first N requests with STATUS; --redirect answers every request with a 302 to URL + path;
each --drop, in turn, breaks one answer's connection after BYTES body bytes; --stall waits
SECONDS before sending a body.
`proxy` is an HTTP proxy that tunnels CONNECT requests (an https proxy with --tls).

Either prints its port on the first line of standard output once it listens, and appends one
JSON object to --log when a request arrives (what was asked) and one when its answer is sent
(the status, and how many body bytes went out).
"""

import argparse
import http.server
import json
import os
import select
import socket
import ssl
import sys
import threading
import time


def log(logfile, **entry):
    with open(logfile, "a") as f:
        f.write(json.dumps(entry) + "\n")


class Files(http.server.SimpleHTTPRequestHandler):
    opts = None
    served = 0
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def record(self, status, sent):
        log(self.opts.log, event="done", status=status, sent=sent)

    def refuse(self, status, extra=()):
        self.send_response(status)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.record(status, 0)

    def do_GET(self):
        o = self.opts
        log(
            o.log,
            event="request",
            path=self.path,
            range=self.headers.get("Range"),
            header=o.header is not None
            and self.headers.get(o.header[0]) == o.header[1],
            authorization=self.headers.get("Authorization") is not None,
        )
        with Files.lock:
            Files.served += 1
            n = Files.served
        if o.fail and n <= o.fail[0]:
            return self.refuse(o.fail[1])
        if o.redirect:
            return self.refuse(302, [("Location", o.redirect + self.path)])
        if o.header and self.headers.get(o.header[0]) != o.header[1]:
            return self.refuse(401)
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return self.refuse(404)
        size = os.path.getsize(path)
        first, last = 0, size - 1
        ranged = o.ranges and self.headers.get("Range", "").startswith("bytes=")
        if ranged:
            a, _, b = self.headers["Range"][len("bytes="):].partition("-")
            first = int(a)
            last = min(int(b), size - 1) if b else size - 1
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (first, last, size))
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Last-Modified", self.date_time_string(int(os.path.getmtime(path))))
        self.end_headers()
        sent = 0
        drop = o.drop[n - 1] if n <= len(o.drop) else None
        try:
            if o.stall:
                time.sleep(o.stall)
            with open(path, "rb") as f:
                f.seek(first)
                left = last - first + 1
                if drop is not None:
                    left = min(left, drop)
                while left > 0:
                    block = f.read(min(left, 64 * 1024))
                    self.wfile.write(block)
                    sent += len(block)
                    left -= len(block)
            if drop is not None:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        self.record(206 if ranged else 200, sent)


class Proxy(http.server.BaseHTTPRequestHandler):
    logfile = None

    def log_message(self, *args):
        pass

    def do_CONNECT(self):
        log(self.logfile, event="request", method="CONNECT", target=self.path)
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
        except OSError:
            self.send_error(502)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        conns = [self.connection, upstream]
        while True:
            ready, _, _ = select.select(conns, [], [], 60)
            if not ready:
                break
            for c in ready:
                data = c.recv(64 * 1024)
                # A TLS connection (an https proxy) may hold more decrypted bytes than select
                # can see.
                while data and getattr(c, "pending", lambda: 0)():
                    data += c.recv(c.pending())
                if not data:
                    upstream.close()
                    return
                (upstream if c is self.connection else self.connection).sendall(data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["files", "proxy"])
    p.add_argument("dir", nargs="?")
    p.add_argument("--log", required=True)
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--client-ca")
    p.add_argument("--header")
    p.add_argument("--ranges", action="store_true")
    p.add_argument("--fail", nargs=2, type=int, metavar=("N", "STATUS"))
    p.add_argument("--redirect")
    p.add_argument("--drop", type=int, action="append", default=[])
    p.add_argument("--stall", type=float)
    o = p.parse_args()
    if o.header:
        name, _, value = o.header.partition(":")
        o.header = (name.strip(), value.strip())
    if o.mode == "proxy":
        Proxy.logfile = o.log
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    else:
        Files.opts = o
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
        o.log = os.path.abspath(o.log)
        os.chdir(o.dir)
    if o.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*o.tls)
        if o.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(o.client_ca)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
