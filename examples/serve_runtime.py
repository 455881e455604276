"""A small image-classification service on eca_deploy.serving, with nothing but the standard library.

    python examples/serve_runtime.py exported/eca_mobilenet_v2.eca.onnx --port 8080        # ONNX Runtime CPU
    python examples/serve_runtime.py model.engine --plugin /opt/eca/lib/libeca_plugin.so    # TensorRT GPU

    curl localhost:8080/health
    curl --data-binary @cat.jpg 'localhost:8080/classify?k=5'          # an image file -> top-k JSON
    curl --data-binary @batch.npy localhost:8080/predict -o logits.npy  # N x C x H x W float32 .npy -> logits

Each request runs on its own thread (ThreadingHTTPServer) and calls the one shared runtime, which is
thread-safe: ONNX Runtime sessions run concurrently, TensorRT requests take an execution context from
the runtime's pool. Connections are kept alive (HTTP/1.1): every request body is read in full, even
when the request is refused, so the next request on the connection parses. Errors are JSON
``{"error": "<one sentence>"}``: 400 for bad input (not an image, wrong shape or dtype, NaN, a bad
``k``), 404 for unknown paths, 405 with ``Allow`` for a path asked with the other method, 411/413 for a body without a length or above ``MAX_BODY_BYTES`` (the
connection then closes), 500 for a failure of the service itself. The port is taken before the model
loads, so a port in use is one sentence on stderr and exit code 2. For production batching and
metrics, serve the model repository that ``eca_deploy.serving.triton_repo.write_triton_repository`` writes
with Triton instead.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import sys
import threading
import traceback
import zipfile
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np

from eca_deploy.errors import EcaDeployError, first_line
from eca_deploy.serving import EcaRuntime, load_class_names

MAX_BODY_BYTES = 64 << 20
DEFAULT_TOP_K = 5
ROUTES = {"/health": "GET", "/classify": "POST", "/predict": "POST"}  # path -> the one method it answers


class ClassifierServer(ThreadingHTTPServer):
    """The listening socket, and the runtime and class names its handlers use once the model is loaded."""

    runtime: EcaRuntime
    class_names: list[str] | None = None


def top_k(query: str, num_classes: int) -> int:
    """The ``k`` of ``?k=N`` (default 5), at most the number of classes; a bad value is a one-sentence error."""
    text = parse_qs(query).get("k", [str(DEFAULT_TOP_K)])[0]
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise EcaDeployError(f"k must be a whole number of at least 1, got {text!r}")
    return min(k, num_classes)


class ClassifierHandler(BaseHTTPRequestHandler):
    """GET /health, POST /classify (an image) and POST /predict (.npy) on ``server.runtime``."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: do not hold the body for an ACK
    timeout = 60  # seconds a keep-alive connection may sit idle (or a body stall) before it is closed
    server: ClassifierServer

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode() + b"\n", "application/json", headers)

    def _route(self, method: str) -> str | None:
        """The request's path when ``method`` is the one it answers; else the 404 or 405 (with ``Allow``) is sent."""
        path = urlparse(self.path).path
        allowed = ROUTES.get(path)
        if allowed is None:
            routes = ", ".join(f"{verb} {route}" for route, verb in ROUTES.items())
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no {path}: this service answers {routes}"})
            return None
        if allowed != method:
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{path} answers {allowed}, not {method}"},
                       {"Allow": allowed})
            return None
        return path

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A refusal before the body was read (ours, and http.server's own for a bad request line or an
        unsupported method) as JSON; the connection closes, since what follows on it cannot be parsed."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        self._json(code, {"error": message or HTTPStatus(code).phrase})

    def _read_body(self) -> bytes | None:
        """The whole request body, so the connection stays usable; None when refused (and answered)."""
        if "Transfer-Encoding" in self.headers:
            self.send_error(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length header, not chunked")
            return None
        declared = self.headers.get("Content-Length", "0")
        if not declared.isdigit():
            self.send_error(HTTPStatus.BAD_REQUEST, f"Content-Length must be a number of bytes, got {declared!r}")
            return None
        length = int(declared)
        if length > MAX_BODY_BYTES:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"the body has {length} bytes, more than the {MAX_BODY_BYTES} this service accepts")
            return None
        body = self.rfile.read(length)
        if len(body) < length:  # the client went away mid-body: nothing to answer
            self.close_connection = True
            return None
        return body

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self._read_body() is not None and self._route("GET") == "/health":
            self._json(HTTPStatus.OK, self.server.runtime.describe())

    def do_POST(self) -> None:  # noqa: N802
        body = self._read_body()
        if body is None or (path := self._route("POST")) is None:
            return
        try:
            if path == "/classify":
                self._classify(urlparse(self.path).query, body)
            else:
                self._predict(body)
        except EcaDeployError as error:  # the client's fault: say why
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
        except Exception as error:  # noqa: BLE001  (the service's fault: log it, answer in one sentence)
            traceback.print_exc(file=sys.stderr)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {first_line(error)}"})

    def _classify(self, query: str, body: bytes) -> None:
        runtime = self.server.runtime
        k = top_k(query, runtime.num_classes)
        if not body:
            raise EcaDeployError("the request body is empty: POST an image file")
        from PIL import Image  # decoding needs Pillow

        try:
            image = Image.open(io.BytesIO(body))
            image.load()
        except OSError as error:  # Pillow's messages name its internal objects: say it plainly
            raise EcaDeployError("the body is not an image Pillow can read: send the whole JPEG, PNG or "
                                 "other image file") from error
        except Image.DecompressionBombError as error:
            raise EcaDeployError(f"the image is too large to decode: {first_line(error)}") from error
        (top,) = runtime.classify(runtime.preprocess([image]), k=k, class_names=self.server.class_names)
        self._json(HTTPStatus.OK, {"top": [entry.to_dict() for entry in top]})

    def _predict(self, body: bytes) -> None:
        if not body:
            raise EcaDeployError("the request body is empty: POST an N x C x H x W array saved with numpy.save")
        try:
            batch = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, zipfile.BadZipFile) as error:  # numpy's messages speak of pickles and keywords
            raise EcaDeployError("the body is not a whole .npy array: send the file numpy.save wrote") from error
        out = io.BytesIO()
        np.save(out, self.server.runtime.predict(batch))
        self._send(HTTPStatus.OK, out.getvalue(), "application/x-npy")

    def log_message(self, format: str, *args) -> None:  # one line per request on stderr
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def load(args: argparse.Namespace) -> tuple[EcaRuntime, list[str] | None]:
    """The runtime and class names the service answers with; a count mismatch is refused here, not per request."""
    class_names = load_class_names(args.class_names) if args.class_names else None
    runtime = EcaRuntime(args.model, plugin_library=args.plugin, providers=args.providers, workers=args.workers)
    if class_names is not None and len(class_names) != runtime.num_classes:
        runtime.close()
        raise EcaDeployError(f"{args.class_names} holds {len(class_names)} class names for a model of "
                             f"{runtime.num_classes} classes")
    return runtime, class_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help=".onnx (ONNX Runtime) or .engine/.plan (TensorRT)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8080, help="port, 0 for any free one (default: 8080)")
    parser.add_argument("--class-names", help="text file with one class name per line")
    parser.add_argument("--plugin", help="libeca_plugin.so for TensorRT engines (default: $ECA_PLUGIN_LIBRARY)")
    parser.add_argument("--providers", default=None, help="ONNX Runtime providers: 'auto' for GPU ones if present")
    parser.add_argument("--workers", type=int, help="TensorRT execution contexts (default: one per profile)")
    args = parser.parse_args(argv)
    try:
        server = ClassifierServer((args.host, args.port), ClassifierHandler)
    except OSError as error:  # port in use, no permission, unknown host
        print(f"error: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 2
    with server:
        try:
            server.runtime, server.class_names = load(args)
        except EcaDeployError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        # SIGTERM (docker stop, Kubernetes) and SIGINT stop the server loop; then the runtime is released.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
        print(f"serving {server.runtime!r} on http://{args.host}:{server.server_address[1]}", file=sys.stderr)
        try:
            server.serve_forever()
        finally:
            server.runtime.close()
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
