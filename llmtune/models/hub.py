"""The Hugging Face hub, only when it can answer: a machine that cannot reach it (offline, a
firewall, a closed HF_ENDPOINT) goes offline for the whole process as soon as a model is named by
its hub id (and before `export` loads an adapter's base), so a model in the local cache loads at
once instead of after a minute of network retries, and one that is not cached is refused saying
so. Local folders and scratch models never probe the network."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

PROBE_SECONDS = 3.0
_turned_off = False
_probed = False  # once per process


def offline_when_unreachable() -> None:
    """Unless HF_HUB_OFFLINE is set already: try one TCP connection to the hub (HF_ENDPOINT);
    when it fails, set HF_HUB_OFFLINE=1 for this process and the processes it starts."""
    global _turned_off, _probed
    import huggingface_hub.constants as hub

    if _probed or hub.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE"):
        return
    _probed = True
    endpoint = urlsplit(hub.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=PROBE_SECONDS).close()
        return
    except OSError:
        pass
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub.HF_HUB_OFFLINE = True
    _turned_off = True


def why_offline() -> str:
    """How the hub came to be off, for a message about a model that is not cached."""
    if _turned_off:
        import huggingface_hub.constants as hub

        return f"the hub ({hub.ENDPOINT}) cannot be reached, so llmtune works offline"
    return "the hub is off (HF_HUB_OFFLINE=1)"
