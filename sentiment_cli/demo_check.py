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
import sys
import tempfile
import urllib.request

from sentiment_cli import servers

REVIEWS = ["a warm, funny and beautifully acted film", "a dull, lifeless mess that overstays its welcome"]


def _exchange(base: str) -> bool:
    """Two reviews in, two predictions out, and the metrics that counted them."""
    request = urllib.request.Request(f"{base}/predict", data=json.dumps({"texts": REVIEWS}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - our own loopback server
        answer = json.loads(resp.read())
    print(f"POST {base}/predict →")
    print(json.dumps(answer, indent=2))
    status, metrics = servers.get(f"{base}/metrics")
    counted = [line for line in metrics.decode().splitlines() if line.startswith("sent_") and "predict" in line]
    print(f"GET {base}/metrics → {status}, e.g. {counted[:2]}")
    if len(answer.get("predictions", [])) != len(REVIEWS):
        print("error: /predict did not answer one prediction per text", file=sys.stderr)
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--wait", type=float, default=120.0)
    args = ap.parse_args()
    with tempfile.NamedTemporaryFile(prefix="sent-serve-", suffix=".log", delete=False) as out:
        output = out.name
    try:
        with servers.running(servers.sent_command("serve", "--profile", args.profile), cwd=os.getcwd(),
                             output=output, port=args.port, ready_timeout=args.wait) as server:
            ok = _exchange(server.url)
        status = server.process.returncode  # stopped with SIGTERM on leaving the block
    except servers.ServerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        os.unlink(output)
    print(f"sent serve stopped on SIGTERM with status {status}")
    return 0 if ok and status in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())
