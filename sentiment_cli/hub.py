"""Whether the Hugging Face Hub can be reached, asked once per process with a short connect.

Offline, huggingface_hub retries each request for tens of seconds before it gives up (26-55 s for
one model name on a machine without internet). Before sent asks the Hub for a model or a dataset
it calls go_offline_unless_reachable(): one TCP connect to the Hub (or to the HTTPS proxy) with a
short timeout. When that fails, or HF_HUB_OFFLINE is already set, this process switches to
HF_HUB_OFFLINE semantics: files come from the local Hugging Face cache only, and a name that is
not cached fails at once with the caller's one-line hint.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0
TRUE = ("1", "true", "yes", "on")


def offline_by_env() -> bool:
    return any(os.environ.get(v, "").strip().lower() in TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _target() -> tuple[str, int]:
    """Where the first byte of a Hub request goes: the HTTPS proxy when one is set, else the Hub."""
    proxy = next((os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(v)), None)
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme in ("https", "") else 80)


@functools.cache
def reachable(timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """One connect, remembered for the process: True when the Hub (or the proxy) answers."""
    if offline_by_env():
        return False
    try:
        with socket.create_connection(_target(), timeout=timeout_s):
            return True
    except OSError:
        return False


def go_offline_unless_reachable() -> bool:
    """True when the Hub can be used; otherwise switch this process to the local cache only
    (HF_HUB_OFFLINE, also for huggingface_hub and datasets when they are already imported)."""
    if reachable():
        return True
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
        if module in sys.modules:
            setattr(sys.modules[module], attr, True)
    return False


def unreachable_note(name: str) -> str:
    return f"the Hugging Face Hub cannot be reached and {name!r} is not in the local cache"
