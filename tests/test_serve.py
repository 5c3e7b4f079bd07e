"""``cspnet serve``: answers equal ``inference_model``'s, requests are batched, every bad input gets its 4xx while the
server keeps serving, SIGTERM drains, and the same app runs on Ray Serve."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import golden

reliability = pytest.mark.reliability
DEMO = sorted(golden.DEMO.glob("*.*"))
ARCH = "cspresnet50"
TIMEOUT_S = 6  # the module server's --request-timeout: the stalled client waits this long


def _png_declaring(width: int, height: int) -> bytes:
    from test_reliability import _png_declaring as png

    return png(width, height)


def _start(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """``cspnet serve ARGS --port 0`` -> (process, base URL) once it has printed its port; its stderr goes to
    ``log`` (a file, never a pipe that could fill)."""
    proc = subprocess.Popen([sys.executable, "-m", "cspnet", "serve", "--port", "0", *args], stdout=subprocess.DEVNULL,
                            stderr=log.open("w"), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"cspnet serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"cspnet serve did not start in 90 s: {log.read_text()[-2000:]}")


def _wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 90, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(every)
    raise AssertionError(f"{url}/ready not 200 within {timeout} s")


def _stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"the server did not exit within {timeout} s of SIGTERM") from None


@pytest.fixture(scope="module")
def server(recipe_checkpoint, tmp_path_factory):
    """One ``cspnet serve`` for the module: the golden recipe weights, small limits so each can be hit."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    proc, url = _start(["--model", ARCH, "--weights", str(recipe_checkpoint(ARCH)), "--max-batch-size", "8",
                        "--max-wait-ms", "20", "--max-body-size", "1MiB", "--max-pixels", "4000000",
                        "--request-timeout", str(TIMEOUT_S), "--max-files", "8"], log)
    try:
        _wait_ready(url, proc)
        yield url, proc, log
    finally:
        rc = _stop(proc)
    assert rc == 0, log.read_text()[-2000:]


@pytest.fixture(scope="module")
def expected(recipe_checkpoint):
    """``inference_model``'s top-5 for the demo images, by file name."""
    import cspnet

    model = cspnet.get_model(ARCH, str(recipe_checkpoint(ARCH)))
    results = cspnet.inference_model(model, [str(p) for p in DEMO], topk=5, num_workers=0)
    return {p.name: res["topk"] for p, res in zip(DEMO, results)}


def _check(pred: dict, want: list) -> None:
    assert [t["label"] for t in pred["topk"]] == [w[0] for w in want]
    assert [t["class"] for t in pred["topk"]] == [w[2] for w in want]
    np.testing.assert_allclose([t["score"] for t in pred["topk"]], [w[1] for w in want], rtol=1e-4, atol=1e-6)


def _predict_good(url: str) -> None:
    r = httpx.post(f"{url}/predict", content=DEMO[0].read_bytes(), headers={"Content-Type": "image/jpeg"},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"][0]["topk"]) == 5


def _metric(url: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric family's samples in ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {m.group(1) or "": float(m.group(2)) for m in re.finditer(rf"^{name}(\{{.*?\}})? (\S+)$", text, re.M)}


@pytest.mark.slow
def test_concurrent_demo_images_get_inference_models_top5_in_batches(server, expected):
    url, _, _ = server
    batches_before = _metric(url, "cspnet_batch_size_count")[""]
    mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}

    def raw(path: Path) -> dict:
        r = httpx.post(f"{url}/predict", content=path.read_bytes(), timeout=60,
                       headers={"Content-Type": mime[path.suffix.lower()]})
        assert r.status_code == 200, r.text
        return r.json()

    def multipart() -> dict:
        r = httpx.post(f"{url}/predict", files=[("file", (p.name, p.read_bytes())) for p in DEMO], timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(9) as pool:
        raws = [pool.submit(raw, p) for p in DEMO * 2]
        multi = pool.submit(multipart)
        for fut, path in zip(raws, DEMO * 2):
            body = fut.result(timeout=120)
            assert body["model"] and len(body["predictions"]) == 1
            _check(body["predictions"][0], expected[path.name])
        body = multi.result(timeout=120)
    assert [p["image"] for p in body["predictions"]] == [p.name for p in DEMO]  # in the order sent
    for pred in body["predictions"]:
        _check(pred, expected[pred["image"]])
    r = httpx.post(f"{url}/predict?topk=2", content=DEMO[0].read_bytes(), timeout=60)
    assert [t["label"] for t in r.json()["predictions"][0]["topk"]] == [w[0] for w in expected[DEMO[0].name][:2]]
    images, batches = 13, _metric(url, "cspnet_batch_size_count")[""] - batches_before
    assert batches < images, "concurrent requests were not gathered into batches"
    metrics = httpx.get(f"{url}/metrics", timeout=10)
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("cspnet_requests_total", "cspnet_request_latency_seconds_bucket", "cspnet_queue_depth",
                 "cspnet_batch_size_bucket"):
        assert name in metrics.text
    assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}


def _truncated_jpeg() -> bytes:
    data = DEMO[0].read_bytes()
    assert data[:2] == b"\xff\xd8"
    return data[: len(data) // 2]


def _multipart(boundary: str, parts: bytes) -> tuple[bytes, dict]:
    return parts, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _chunks(total: int):
    for _ in range(total // 65536 + 1):
        yield b"\0" * 65536


BAD_UPLOADS = {  # case -> (body, headers, status, words in the message)
    "serve-text-file": (b"just some notes\n" * 20, {"Content-Type": "image/jpeg"}, 400,
                        "is not an image Pillow can read"),
    "serve-truncated-jpeg": (_truncated_jpeg(), {"Content-Type": "image/jpeg"}, 400, "is corrupt or truncated"),
    "serve-zero-byte": (b"", {"Content-Type": "image/jpeg"}, 400, "the request body is empty"),
    "serve-decompression-bomb": (_png_declaring(40000, 40000), {"Content-Type": "image/png"}, 400,
                                 "declares too many pixels"),
    "serve-over-max-pixels": (_png_declaring(2500, 2000), {"Content-Type": "image/png"}, 400,
                              "2500 x 2000 pixels, over the limit of 4000000"),
    "serve-body-too-large": (b"\xff\xd8" + b"\0" * (2 << 20), {"Content-Type": "image/jpeg"}, 413,
                             "over the limit of 1048576 bytes"),
    "serve-body-too-large-chunked": (_chunks(2 << 20), {"Content-Type": "image/jpeg"}, 413,
                                     "over the limit of 1048576 bytes"),
    "serve-wrong-content-type": (DEMO[0].read_bytes(), {"Content-Type": "application/json"}, 415,
                                 "Content-Type 'application/json' is not an image"),
    "serve-malformed-multipart": (*_multipart("xyz", b"--xyz\r\nno headers, no end"), 400,
                                  "malformed multipart/form-data body"),
    "serve-multipart-no-boundary": (DEMO[0].read_bytes(), {"Content-Type": "multipart/form-data"}, 400,
                                    "Missing boundary"),
    "serve-multipart-no-file": (*_multipart("b", b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n'
                                                 b'--b--\r\n'), 400, "has no file part"),
}


@pytest.mark.slow
@reliability("serve-text-file", "serve-truncated-jpeg", "serve-zero-byte", "serve-decompression-bomb",  # BAD_UPLOADS
             "serve-over-max-pixels", "serve-body-too-large", "serve-body-too-large-chunked",
             "serve-wrong-content-type", "serve-malformed-multipart", "serve-multipart-no-boundary",
             "serve-multipart-no-file")
@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_get_a_4xx_saying_why_and_the_server_keeps_serving(server, case):
    url, proc, _ = server
    body, headers, status, words = BAD_UPLOADS[case]
    r = httpx.post(f"{url}/predict", content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"], r.text
    _predict_good(url)
    assert proc.poll() is None


def test_every_bad_upload_is_a_reliability_case():
    marks = test_bad_uploads_get_a_4xx_saying_why_and_the_server_keeps_serving.pytestmark
    assert {a for m in marks if m.name == "reliability" for a in m.args} == set(BAD_UPLOADS)


def _raw_request(url: str, head: bytes, body: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head + body)
    return sock


@pytest.mark.slow
@reliability("serve-stalled-client")
def test_a_client_that_stalls_mid_body_is_cut_at_the_timeout(server):
    url, _, _ = server
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
    start = time.monotonic()
    with _raw_request(url, head, DEMO[0].read_bytes()[:1000]) as sock:
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    took = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"did not arrive within 6 s (1000 of 100000 bytes received" in reply, reply
    assert TIMEOUT_S - 0.5 < took < TIMEOUT_S + 15
    _predict_good(url)


@pytest.mark.slow
@reliability("serve-client-disconnects")
def test_clients_that_leave_before_the_answer_leak_nothing(server):
    url, _, log = server
    data = DEMO[0].read_bytes()
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
            .encode())
    for _ in range(6):
        _raw_request(url, head, data).close()  # the whole request, then gone before the answer
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (_metric(url, "cspnet_requests_in_flight")[""], _metric(url, "cspnet_queue_depth")[""]) == (0, 0):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("requests of clients that left are still in hand")
    _predict_good(url)
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]


@pytest.mark.slow
@reliability("serve-sigterm-drains")
def test_sigterm_mid_load_answers_every_accepted_request_and_exits_0(recipe_checkpoint, tmp_path):
    log = tmp_path / "server.log"
    proc, url = _start(["--weights", str(recipe_checkpoint(ARCH)), "--max-batch-size", "8", "--no-access-log"], log)
    data = DEMO[0].read_bytes()
    codes: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client():
        with httpx.Client(timeout=120) as http:
            while True:
                try:
                    r = http.post(f"{url}/predict", content=data, headers={"Content-Type": "image/jpeg"})
                except httpx.TransportError as e:  # refused or closed: the server no longer accepts
                    with lock:
                        errors.append(type(e).__name__)
                    return
                with lock:
                    codes.append(r.status_code)

    try:
        _wait_ready(url, proc)
        threads = [threading.Thread(target=client, daemon=True) for _ in range(12)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(codes) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(codes) >= 8, "no load reached the server"
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(90)
        rc = _stop(proc, 90)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 0, text[-2000:]
    assert set(codes) == {200}, codes
    answered = re.search(r"answered (\d+) requests", text)
    assert answered, text[-2000:]
    assert int(answered.group(1)) == len(codes), (answered.group(0), len(codes))  # every accepted request answered
    assert len(errors) == len(threads)  # and each client then found the door shut


# --- in process: the app, the batcher and the decoding, without a server ---


def _handler(tiny_classifier, **limits):
    from cspnet.serve import Limits, ModelHandler

    handler = ModelHandler(tiny_classifier(), Limits(**limits))
    handler.warm_up()
    return handler


@reliability("serve-queue-full", "serve-warming-up")
def test_queue_full_gets_503_with_retry_after_and_warm_up_gets_503(tiny_classifier):
    from cspnet.serve import create_app

    handler = _handler(tiny_classifier, max_queue=2, max_batch_size=2)
    release = asyncio.Event()

    async def slow_predict(crop: torch.Tensor) -> torch.Tensor:
        await release.wait()
        return handler.predict_batch(crop[None])[0]

    async def main():
        transport = httpx.ASGITransport(app=create_app(handler, slow_predict))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            post = lambda: client.post("/predict", content=DEMO[0].read_bytes(),  # noqa: E731
                                       headers={"Content-Type": "image/jpeg"})
            held = [asyncio.ensure_future(post()) for _ in range(2)]
            for _ in range(500):
                if handler.metrics.registry.get_sample_value("cspnet_queue_depth") == 2:
                    break
                await asyncio.sleep(0.01)
            refused = await post()
            release.set()
            answers = await asyncio.gather(*held)
            handler.warm = False
            cold = await post(), await client.get("/ready")
        return refused, answers, cold

    refused, answers, cold = asyncio.run(asyncio.wait_for(main(), 60))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "2 requests in hand (--max-queue)" in refused.json()["detail"]
    assert [a.status_code for a in answers] == [200, 200]
    assert [c.status_code for c in cold] == [503, 503] and "warming up" in cold[0].json()["detail"]


def test_the_batcher_gathers_up_to_the_limit_and_drops_callers_that_left():
    from cspnet.serve import Batcher

    sizes: list[int] = []

    def run_batch(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        time.sleep(0.05)
        return x * 2

    async def main():
        batcher = Batcher(run_batch, max_batch_size=4, max_wait_s=0.2)
        batcher.start()
        calls = [asyncio.ensure_future(batcher(torch.full((1,), float(i)))) for i in range(6)]
        gone = asyncio.ensure_future(batcher(torch.zeros(1)))
        await asyncio.sleep(0)
        gone.cancel()  # a client that left while queued
        results = await asyncio.gather(*calls)
        await batcher.stop()
        return results

    results = asyncio.run(asyncio.wait_for(main(), 30))
    assert [float(r) for r in results] == [2.0 * i for i in range(6)]
    assert sizes == [4, 2]  # 7 queued, one cancelled: the rest in batches of at most 4


def test_an_upload_is_preprocessed_as_the_same_file_would_be(tiny_classifier, tmp_path):
    """Bytes go through the project's own decoding: EXIF rotation applied, the same crop as from the file."""
    handler = _handler(tiny_classifier)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    want = handler.transform.to_uint8(str(path))
    got = handler.preprocess(path.read_bytes(), "rotated.jpg")
    assert torch.equal(got, want)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert torch.equal(handler.preprocess(buf.getvalue(), "x.png"), handler.transform.to_uint8(img))


def test_limits_and_the_command_line_refuse_bad_values_before_loading():
    from cspnet.errors import InvalidOptionError
    from cspnet.serve import Limits

    with pytest.raises(InvalidOptionError, match=r"max_pixels=.*\(Pillow's limit\)"):
        Limits(max_pixels=10**12)
    with pytest.raises(InvalidOptionError, match=r"unknown serving limit\(s\) \['max_bach_size'\]"):
        Limits.from_mapping({"max_bach_size": 3})
    assert Limits.from_mapping({"max_batch_size": "3", "max_wait_ms": "2.5"}) == Limits(max_batch_size=3,
                                                                                       max_wait_ms=2.5)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cspnet", "serve", "--max-body-size", "12XB"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage: cspnet serve" in proc.stderr
    assert "argument --max-body-size: expected a size such as 20MiB" in proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "torch" not in imported


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ray's own pydantic usage
def test_ray_app_gives_the_same_answers(recipe_checkpoint, expected, tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'cspnet[ray]')")
    from ray import serve

    import cspnet.serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray's sockets live in its temp folder and a Unix socket path has at most 107 bytes: pytest's folders (under
    # xdist: .../popen-gw1/tmp0/...) are too deep, so a short one in /tmp, removed afterwards
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = cspnet.serve.ray_app({"model": ARCH, "weights": str(recipe_checkpoint(ARCH)), "max_batch_size": "4",
                                    "max_wait_ms": "20", "ray_actor_options": {"num_cpus": 1}})
        serve.run(app, name="cspnet", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, None, timeout=60, every=0.5)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda p: httpx.post(f"{url}/predict", content=p.read_bytes(), timeout=60), DEMO))
        for path, r in zip(DEMO, answers):
            assert r.status_code == 200, r.text
            _check(r.json()["predictions"][0], expected[path.name])
        bad = httpx.post(f"{url}/predict", content=b"not an image", timeout=60)
        assert bad.status_code == 400 and "is not an image" in bad.json()["detail"]
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_without_the_serve_extra_the_error_says_how_to_add_it(monkeypatch, capsys):
    import importlib.util

    from cspnet.cli import main as cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert cli(["serve", "--port", "0"]) == 2
    assert 'cspnet serve needs uvicorn (not installed here): pip install "cspnet[serve]"' in capsys.readouterr().err
