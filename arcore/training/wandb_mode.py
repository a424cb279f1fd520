"""W&B never blocks training: the mode a run's W&B logger gets, decided in a few seconds before it starts.

With an account configured (``WANDB_API_KEY`` or ``wandb login``) W&B logs online, and without a network its
``wandb.init`` waits about two minutes, then fails with a traceback: the run never trains. So before the logger
starts, the W&B server is tried once (:func:`reachable`, three seconds at most, name lookup included); when it
cannot be reached the run logs offline, saying so in one line (``wandb sync`` uploads it later). A mode that cannot
work (``WANDB_MODE=online`` with no key) is refused in one line before any work.
"""

from __future__ import annotations

import netrc
import os
import socket
import sys
import threading
from urllib.parse import urlsplit

from arcore.errors import UsageError

SERVER = "https://api.wandb.ai"


def api_key_configured() -> bool:
    """Whether W&B has a key: ``WANDB_API_KEY``, or an entry for its server in ``~/.netrc`` (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or SERVER).hostname or ""
    try:
        return bool(netrc.netrc().authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host and port opens within ``timeout`` seconds, the name lookup
    included (run in a thread: a lookup without a network can hang far longer than any socket timeout)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((parts.hostname or "", port), timeout=timeout):
                result.append(True)
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def choose_wandb_mode(tool: str) -> None:
    """Set ``WANDB_MODE`` for a run whose logger is W&B (see the module docstring); prints one line when it goes
    offline for want of a network."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        return
    if not api_key_configured():
        if mode == "online":
            raise UsageError("WANDB_MODE=online but no W&B API key is configured: run `wandb login` or set "
                             "WANDB_API_KEY, or unset WANDB_MODE to log offline (`wandb sync` uploads later)")
        os.environ["WANDB_MODE"] = "offline"
        return
    server = os.environ.get("WANDB_BASE_URL") or SERVER
    if not reachable(server):
        os.environ["WANDB_MODE"] = "offline"
        print(f"{tool}: W&B server {urlsplit(server).hostname} cannot be reached: logging offline (upload the run "
              f"later with `wandb sync`)", file=sys.stderr)
