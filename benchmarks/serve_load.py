"""Load test of `liser serve` on loopback: requests/s and latency, PyTorch vs ONNX runtime.

Starts `liser serve STUDENT` (a separate process, as a user would) for each backend, waits for
/health, then sends N requests of a clip, C at a time, and prints both backends side by side:
requests/s, p50 and p95 latency, errors. Bounded: N requests, a time limit per backend.

    python benchmarks/serve_load.py [--student RUN_DIR/student] [--requests 200] [--concurrency 8] [--seconds 3]

Without --student it trains the main job's student first (recipes/synth_kd.yaml, ~2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def clip(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype("float32"), rate, format="WAV")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, data: bytes, n: int, concurrency: int, limit: float) -> dict:
    import httpx

    latencies, errors = [], 0
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=limit) as c:
        async def one():
            nonlocal errors
            async with gate:
                t0 = time.perf_counter()
                try:
                    r = await c.post("/predict", content=data)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*[one() for _ in range(n)]), limit)
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"rps": n / wall, "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "errors": errors}


def serve(student: Path, backend: str, concurrency: int):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "liser_tools.cli", "serve", str(student), "--port", str(port),
                             "--backend", backend, "--concurrency", str(min(concurrency, 4))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"liser serve did not start: {proc.stderr.read()[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of the clip sent")
    ap.add_argument("--limit", type=float, default=300.0, help="time limit per backend (s)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="liser-serve-load-"))
    try:
        student = args.student
        if student is None:
            subprocess.run([sys.executable, "-m", "liser_tools.cli", "run", str(REPO / "recipes" / "synth_kd.yaml"),
                            f"run_dir={work / 'run'}"], check=True, stdout=subprocess.DEVNULL)
            student = work / "run" / "student"
        staged = work / "student"
        shutil.copytree(student, staged, ignore=shutil.ignore_patterns("student.onnx*"))
        subprocess.run([sys.executable, "-m", "liser_tools.cli", "export", str(staged)], check=True, stdout=subprocess.DEVNULL)
        data = clip(args.seconds)
        rows = {}
        for backend in ("torch", "onnx"):
            proc, url = serve(staged, backend, args.concurrency)
            try:
                asyncio.run(load(url, data, 8, 2, args.limit))  # warm-up
                rows[backend] = asyncio.run(load(url, data, args.requests, args.concurrency, args.limit))
            finally:
                proc.terminate()
                proc.wait(30)
        print(f"{args.requests} requests of a {args.seconds:g} s clip, {args.concurrency} at a time, loopback")
        print(f"{'backend':<8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'errors':>7}")
        for b, r in rows.items():
            print(f"{b:<8} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p95']:>8.1f} {r['errors']:>7d}")
        print(f"onnx / torch throughput: {rows['onnx']['rps'] / rows['torch']['rps']:.2f}x")
        return 1 if any(r["errors"] for r in rows.values()) else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
