#!/usr/bin/env python
"""``cspnet serve`` under load, against offline ``inference_model`` on the same images in the same run.

Saves one checkpoint (the architecture's random init: speed does not depend on the weights), then:

1. offline: ``cspnet.inference_model(model, paths, batch_size=B)`` over ``--offline-images`` copies of the demo
   images (its own loader workers, one per core), timed after a warm-up call;
2. ``cspnet serve --weights CKPT --max-batch-size B`` as a subprocess on 127.0.0.1, and a bounded asyncio client
   (httpx) at each concurrency level (default 1, 8 and 64 clients, each client sending its next request when its
   last one is answered), cycling through the demo images as raw bodies; per level: requests, errors (any
   non-200 or transport error), img/s, p50/p99 latency, and the batch sizes the server ran (from ``/metrics``);
3. offline again, so a drift in the shared machine's load shows; the ratio uses the mean of the two.

Throughput at saturation is the highest-concurrency level's. Prints the section; ``--results FILE`` also writes it
there (``benchmarks/common.write_section``)::

    python benchmarks/bench_serve.py                     # 100 + 400 + 1600 requests
    python benchmarks/bench_serve.py --quick             # a smoke run: 10 requests per level
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DEMO = sorted((common.REPO / "demo").glob("*.*"))
MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return common.cpu_model()


def offline(model, paths: list[str], batch_size: int) -> float:
    """img/s of ``inference_model`` over ``paths`` (after one warm-up batch)."""
    from cspnet import inference_model

    inference_model(model, paths[:batch_size], batch_size=batch_size)
    t0 = time.perf_counter()
    inference_model(model, paths, batch_size=batch_size, topk=5)
    return len(paths) / (time.perf_counter() - t0)


def batch_sizes(url: str) -> Counter:
    """``{batch size: forward passes}`` so far, from the cumulative histogram in ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    cum = sorted((float(m.group(1)), float(m.group(2))) for m in re.finditer(
        r'^cspnet_batch_size_bucket\{le="([0-9.]+)"\} (\S+)$', text, re.M))
    out, prev = Counter(), 0.0
    for le, count in cum:
        if count > prev:
            out[int(le)] = int(count - prev)
        prev = count
    return out


async def load(url: str, bodies: list[tuple[bytes, str]], clients: int, requests: int) -> dict:
    """``clients`` coroutines sharing ``requests`` requests; each sends its next when the last is answered."""
    latencies: list[float] = []
    errors: Counter = Counter()
    sent = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests:
            body, mime = bodies[sent % len(bodies)]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{url}/predict", content=body, headers={"Content-Type": mime})
                if r.status_code != 200:
                    errors[str(r.status_code)] += 1
                    continue
            except httpx.HTTPError as e:
                errors[type(e).__name__] += 1
                continue
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=300) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"clients": clients, "requests": requests, "errors": dict(errors), "img_s": len(latencies) / wall,
            "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98], "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="cspresnet50", choices=common.ARCHS)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--levels", default="1:100,8:400,64:1600", help="CLIENTS:REQUESTS,... (default %(default)s)")
    p.add_argument("--offline-images", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="10 requests per level, 32 offline images")
    p.add_argument("--results", type=Path, default=None, help="also write the section into this file")
    args = p.parse_args()
    levels = [tuple(int(v) for v in level.split(":")) for level in args.levels.split(",")]
    if args.quick:
        levels, args.offline_images = [(c, 10) for c, _ in levels], 32

    import cspnet
    from cspnet.spec import ModelSpec
    from cspnet.weights.files import save_state_dict

    info = {"lscpu model name": lscpu_model(), **common.machine(torch.device("cpu"))}
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    model = cspnet.get_model(args.arch)
    paths = [str(DEMO[i % len(DEMO)]) for i in range(args.offline_images)]
    bodies = [(p.read_bytes(), MIME[p.suffix.lower()]) for p in DEMO]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_state_dict(model.state_dict(), Path(tmp) / f"{args.arch}.pth", "cspnet", spec=ModelSpec.of(model))
        before = offline(model, paths, args.max_batch_size)
        print(f"offline inference_model: {before:.1f} img/s", flush=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = Path(tmp) / "server.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "cspnet", "serve", "--weights", str(ckpt), "--port", str(port),
             "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
             "--max-queue", str(max(256, 2 * max(c for c, _ in levels))), "--no-access-log", "--log-level", "warning"],
            stderr=log.open("w"))
        url = f"http://127.0.0.1:{port}"
        rows = []
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not become ready: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            for clients, requests in levels:
                seen = batch_sizes(url)
                row = asyncio.run(load(url, bodies, clients, requests))
                row["batches"] = batch_sizes(url) - seen
                rows.append(row)
                print(row, flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            rc = server.wait(120)
        after = offline(model, paths, args.max_batch_size)
        print(f"offline inference_model again: {after:.1f} img/s; server exit status {rc}", flush=True)
    ref = (before + after) / 2
    total = sum(r["requests"] for r in rows)
    errors = sum(sum(r["errors"].values()) for r in rows)
    lines = common.header_lines(info) + [
        f"- model: {args.arch} ({model.transform.preset.crop} px crop), server `--max-batch-size "
        f"{args.max_batch_size} --max-wait-ms {args.max_wait_ms:g}`, images: the {len(DEMO)} demo images as raw "
        f"bodies", "",
        f"offline `inference_model` (batch {args.max_batch_size}, {args.offline_images} images): {before:.1f} img/s "
        f"before the server runs, {after:.1f} after (mean {ref:.1f})", "",
        "| clients | requests | errors | img/s | / offline | p50 ms | p99 ms | batch sizes (size x passes) |",
        "| --: | --: | --: | --: | --: | --: | --: | :-- |"]
    for r in rows:
        hist = ", ".join(f"{k}x{v}" for k, v in sorted(r["batches"].items()))
        lines.append(f"| {r['clients']} | {r['requests']} | {sum(r['errors'].values())} | {r['img_s']:.1f} | "
                     f"{r['img_s'] / ref:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {hist} |")
    sat = rows[-1]
    lines += ["", f"Throughput at saturation ({sat['clients']} clients): {sat['img_s']:.1f} img/s = "
                  f"**{sat['img_s'] / ref:.2f} x offline** `inference_model`; {errors} errors in {total} requests; "
                  f"the server exited with status {rc} on SIGTERM."]
    body = "\n".join(lines)
    print("\n" + body)
    common.write_section(args.results, "serve-cpu", "cspnet serve under load (CPU)", body)
    return 0 if errors == 0 and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
