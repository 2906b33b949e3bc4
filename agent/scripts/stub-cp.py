"""A recording stand-in for the control plane's two agent routes, for the scripts beside it.

Usage: stub-cp.py PORT DIR. Every GET is answered with DIR/desired.json (rewrite it to change the
desired generation); every POST body (a report) is appended to DIR/reports.log as one line,
prefixed by the time it arrived (seconds since the epoch, three decimals) and a space.
"""
import http.server
import os
import sys
import time

PORT, W = int(sys.argv[1]), sys.argv[2]


class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        body = open(os.path.join(W, "desired.json"), "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(os.path.join(W, "reports.log"), "ab") as f:
            f.write(("%.3f " % time.time()).encode() + body + b"\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
