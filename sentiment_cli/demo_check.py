"""The last leg of `make demo`: serve the champion, ask it for predictions, stop it cleanly.

Starts `sent serve` (default model: the registry's @champion) on 127.0.0.1, waits for /readyz,
posts two reviews to /predict, reads /metrics, sends SIGTERM and checks the predictions landed
in the prediction log. Exits non-zero, with the server's output, if any of that fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

REVIEWS = ["a warm, funny and beautifully acted film", "a dull, lifeless mess that overstays its welcome"]


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own loopback server
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--wait", type=float, default=120.0)
    args = ap.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "sentiment_cli.cli", "serve", "--profile", args.profile,
                               "--host", "127.0.0.1", "--port", str(args.port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + args.wait
        while True:
            if server.poll() is not None:
                print(server.stdout.read(), file=sys.stderr)
                print(f"error: sent serve exited with status {server.returncode}", file=sys.stderr)
                return 1
            try:
                if _get(f"{base}/readyz", 1.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                print(f"error: {base}/readyz not ready after {args.wait:.0f}s", file=sys.stderr)
                return 1
            time.sleep(0.25)
        request = urllib.request.Request(f"{base}/predict", data=json.dumps({"texts": REVIEWS}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            answer = json.loads(resp.read())
        print(f"POST {base}/predict →")
        print(json.dumps(answer, indent=2))
        status, metrics = _get(f"{base}/metrics")
        counted = [line for line in metrics.decode().splitlines() if line.startswith("sent_") and "predict" in line]
        print(f"GET {base}/metrics → {status}, e.g. {counted[:2]}")
        if len(answer.get("predictions", [])) != len(REVIEWS):
            print("error: /predict did not answer one prediction per text", file=sys.stderr)
            return 1
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"sent serve stopped on SIGTERM with status {server.returncode}")
    return 0 if server.returncode in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())
