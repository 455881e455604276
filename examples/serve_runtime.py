"""A small image-classification service on eca_deploy.runtime, with nothing but the standard library.

    python examples/serve_runtime.py exported/eca_mobilenet_v2.eca.onnx --port 8080        # ONNX Runtime CPU
    python examples/serve_runtime.py model.engine --plugin /opt/eca/lib/libeca_plugin.so    # TensorRT GPU

    curl localhost:8080/health
    curl --data-binary @cat.jpg 'localhost:8080/classify?k=5'          # an image file -> top-k JSON
    curl --data-binary @batch.npy localhost:8080/predict -o logits.npy  # N x C x H x W float32 .npy -> logits

Each request runs on its own thread (ThreadingHTTPServer) and calls the one shared runtime, which is
thread-safe: ONNX Runtime sessions run concurrently, TensorRT requests take an execution context from
the runtime's pool. Bad input (not an image, wrong shape or dtype, NaN) is answered with HTTP 400 and
the runtime's one-sentence reason. For production batching and metrics, serve the model repository
that ``eca_deploy.triton_repo.write_triton_repository`` writes with Triton instead.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np

from eca_deploy.errors import EcaDeployError
from eca_deploy.runtime import EcaRuntime, load_class_names

MAX_BODY_BYTES = 64 << 20


def make_handler(runtime: EcaRuntime, class_names: list[str] | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload) -> None:
            self._send(status, json.dumps(payload).encode() + b"\n", "application/json")

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                raise EcaDeployError(f"send a request body of 1 byte to {MAX_BODY_BYTES} bytes")
            return self.rfile.read(length)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if urlparse(self.path).path == "/health":
                self._json(HTTPStatus.OK, runtime.describe())
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "GET /health, POST /classify or POST /predict"})

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            try:
                if url.path == "/classify":
                    k = int(parse_qs(url.query).get("k", ["5"])[0])
                    from PIL import Image  # decoding needs Pillow

                    try:
                        image = Image.open(io.BytesIO(self._body()))
                        image.load()
                    except OSError as error:
                        raise EcaDeployError(f"the body is not an image Pillow can read: {error}") from error
                    (top,) = runtime.classify(runtime.preprocess([image]), k=min(k, runtime.num_classes),
                                              class_names=class_names)
                    self._json(HTTPStatus.OK, {"top": [entry.to_dict() for entry in top]})
                elif url.path == "/predict":
                    try:
                        batch = np.load(io.BytesIO(self._body()), allow_pickle=False)
                    except ValueError as error:
                        raise EcaDeployError(f"the body is not a .npy array: {error}") from error
                    out = io.BytesIO()
                    np.save(out, runtime.predict(batch))
                    self._send(HTTPStatus.OK, out.getvalue(), "application/x-npy")
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": "POST /classify (an image) or /predict (.npy)"})
            except (EcaDeployError, ValueError) as error:  # the client's fault: say why
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})

        def log_message(self, format: str, *args) -> None:  # one line per request on stderr
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help=".onnx (ONNX Runtime) or .engine/.plan (TensorRT)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    parser.add_argument("--class-names", help="text file with one class name per line")
    parser.add_argument("--plugin", help="libeca_plugin.so for TensorRT engines (default: $ECA_PLUGIN_LIBRARY)")
    parser.add_argument("--providers", default=None, help="ONNX Runtime providers: 'auto' for GPU ones if present")
    parser.add_argument("--workers", type=int, help="TensorRT execution contexts (default: one per profile)")
    args = parser.parse_args(argv)
    try:
        runtime = EcaRuntime(args.model, plugin_library=args.plugin, providers=args.providers, workers=args.workers)
        class_names = load_class_names(args.class_names) if args.class_names else None
    except EcaDeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer((args.host, args.port), make_handler(runtime, class_names))
    # SIGTERM (docker stop, Kubernetes) and SIGINT stop the server loop; then the runtime is released.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"serving {runtime!r} on http://{args.host}:{server.server_address[1]}", file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        runtime.close()
    print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
