"""examples/serve_runtime.py as its users meet it: a real process on a free loopback port, spoken to over
one persistent HTTP/1.1 connection (http.client), as keep-alive clients and load balancers do.

Every refusal is a JSON one-sentence error that leaves the connection usable for the next request (the
body is always read), bodies without a length or above the limit are refused before they are read,
and a port in use is one sentence and exit code 2.
"""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_checks import assert_refused, required
from test_runtime import INPUT_SHAPE, NUM_CLASSES, export_demo_64

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "serve_runtime.py"


def _example_module():
    """The example script as a module (it is not in a package), for its constants."""
    spec = importlib.util.spec_from_file_location("serve_runtime", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAX_BODY_BYTES = _example_module().MAX_BODY_BYTES


def _npy(array: np.ndarray) -> bytes:
    body = io.BytesIO()
    np.save(body, array)
    return body.getvalue()


def _png() -> bytes:
    from PIL import Image

    body = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(body, "PNG")
    return body.getvalue()


def _batch(size: int) -> np.ndarray:
    return np.random.default_rng(size).standard_normal((size, *INPUT_SHAPE), dtype=np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    module, _, fused = export_demo_64(tmp_path_factory.getbasetemp())
    return module, fused


@pytest.fixture(scope="module")
def service(model, tmp_path_factory) -> Iterator[int]:
    """The example serving the fused model on a free loopback port; stopped with SIGTERM, which must exit 0."""
    log = tmp_path_factory.mktemp("service") / "stderr.log"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, str(SCRIPT), str(model[1]), "--port", "0"], stderr=stderr)
    deadline = time.monotonic() + 60
    while not (match := re.search(r"on http://127\.0\.0\.1:(\d+)", log.read_text())):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    try:
        yield int(match.group(1))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


def _request(connection: http.client.HTTPConnection, method: str, path: str,
             body: bytes | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
    connection.request(method, path, body=body)
    response = connection.getresponse()
    return response.status, response.read(), response


def _error(payload: bytes) -> str:
    """The one-sentence reason of a JSON error answer."""
    error = json.loads(payload)["error"]
    assert "\n" not in error and "Traceback" not in error, error
    return error


def _with_nan(batch: np.ndarray) -> np.ndarray:
    batch[0, 0, 0, 0] = np.nan
    return batch


def test_example_service_serves_the_runtime(model, service):
    module, _ = model
    connection = http.client.HTTPConnection("127.0.0.1", service, timeout=30)
    status, payload, _ = _request(connection, "GET", "/health")
    assert status == 200 and json.loads(payload)["input"]["num_classes"] == NUM_CLASSES
    batch = _batch(2)
    status, payload, response = _request(connection, "POST", "/predict", _npy(batch))
    assert status == 200 and response.getheader("Content-Type") == "application/x-npy"
    with torch.no_grad():
        expected = module(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(np.load(io.BytesIO(payload)), expected, atol=1e-4, rtol=1e-4)
    required("PIL")
    status, payload, _ = _request(connection, "POST", "/classify?k=3", _png())
    top = json.loads(payload)["top"]
    assert status == 200 and len(top) == 3 and top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    connection.close()


def test_every_refusal_is_one_json_sentence_and_the_connection_stays_usable(model, service):
    """One keep-alive connection: after each refused request (body read in full), the next one is answered."""
    module, _ = model
    connection = http.client.HTTPConnection("127.0.0.1", service, timeout=30)
    _request(connection, "GET", "/health")
    socket_in_use = connection.sock
    cases = [
        ("POST", "/classify?k=abc", b"an image", 400, r"^k must be a whole number of at least 1, got 'abc'$"),
        ("POST", "/classify?k=0", b"x", 400, r"^k must be a whole number"),
        ("POST", "/classify", b"not an image", 400, r"^the body is not an image Pillow can read"),
        ("POST", "/predict", _npy(_batch(2).astype(np.float64)), 400, r"^input must be float32, got float64"),
        ("POST", "/predict", _npy(_batch(2))[:-100], 400, r"^the body is not a whole \.npy array"),
        ("POST", "/predict", b"PK\x03\x04 not a zip", 400, r"^the body is not a whole \.npy array"),
        ("POST", "/predict", b"", 400, r"^the request body is empty"),
        ("POST", "/predict", _npy(_with_nan(_batch(2))), 400,
         r"^input holds 1 non-finite value \(NaN or Inf\), for which the model gives no meaningful logits$"),
        ("POST", "/nowhere", _npy(_batch(1)), 404, r"^no /nowhere: this service answers GET /health, POST /classify"),
        ("GET", "/nowhere", b"a body on a GET", 404, r"^no /nowhere: .*POST /predict$"),
        ("GET", "/predict", b"", 405, r"^/predict answers POST, not GET$"),
        ("GET", "/classify?k=3", b"", 405, r"^/classify answers POST, not GET$"),
        ("POST", "/health", b"{}", 405, r"^/health answers GET, not POST$"),
    ]
    for method, path, body, status, pattern in cases:
        answer, payload, response = _request(connection, method, path, body)
        assert (answer, response.getheader("Content-Type")) == (status, "application/json"), (path, payload)
        assert re.search(pattern, _error(payload)), (path, payload)
        assert "check_finite" not in _error(payload)  # no Python remedy for an HTTP client
        if status == 405:
            assert response.getheader("Allow") == ("GET" if path == "/health" else "POST")
        assert not response.will_close and connection.sock is socket_in_use, f"{path}: the connection was closed"
    batch = _batch(3)
    status, payload, _ = _request(connection, "POST", "/predict", _npy(batch))
    with torch.no_grad():
        expected = module(torch.from_numpy(batch)).numpy()
    assert status == 200 and connection.sock is socket_in_use
    np.testing.assert_allclose(np.load(io.BytesIO(payload)), expected, atol=1e-4, rtol=1e-4)
    connection.close()


@pytest.mark.parametrize(("headers", "status", "pattern"), [
    ({"Content-Length": str(MAX_BODY_BYTES + 1)}, 413, rf"^the body has {MAX_BODY_BYTES + 1} bytes, more than"),
    ({"Transfer-Encoding": "chunked"}, 411, r"^send the body with a Content-Length header"),
    ({"Content-Length": "lots"}, 400, r"^Content-Length must be a number of bytes, got 'lots'$"),
])
def test_bodies_of_unknown_or_excessive_length_are_refused_unread(service, headers, status, pattern):
    """The service answers at once (without reading the body) and closes the connection."""
    connection = http.client.HTTPConnection("127.0.0.1", service, timeout=30)
    connection.putrequest("POST", "/predict")
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == status and response.getheader("Connection") == "close"
    assert re.search(pattern, _error(response.read()))
    assert response.will_close
    connection.close()


def test_a_port_in_use_is_one_sentence_and_exit_2(model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, str(SCRIPT), str(model[1]), "--port", str(port)],
                                capture_output=True, text=True, timeout=60, check=False)
    assert_refused(result, rf"^error: cannot listen on 127\.0\.0\.1:{port}: Address already in use$")
    result = subprocess.run([sys.executable, str(SCRIPT), str(model[1]), "--port", "70000"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "expected a port from 0 to 65535, got '70000'" in result.stderr


def test_class_names_that_do_not_fit_the_model_are_refused_at_start(model, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    result = subprocess.run([sys.executable, str(SCRIPT), str(model[1]), "--port", "0", "--class-names", str(names)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert_refused(result, rf"^error: .*names\.txt holds 2 class names for a model of {NUM_CLASSES} classes$")
