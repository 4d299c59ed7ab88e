"""Inside a sandbox with `network: egress`: start the egress bridge, then run the server.

Run as `python -I -S sandbox_launcher.py BRIDGE_FILE SOCKET -- argv...` (standard library only,
no package imports: the file is bind-mounted alone). The bridge (`sandbox_bridge.start_bridge`)
serves 127.0.0.1:PROXY_PORT in a daemon thread of this process, so this process stays the
server's parent: it forwards SIGTERM/SIGINT to it and exits with its status. Servers without
network need none of this and are exec'd directly.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    """Bridge, run, wait; the server's exit status (128 + signal when killed)."""
    bridge_file, socket_path, separator, *command = argv
    if separator != "--" or not command:
        print("usage: sandbox_launcher.py BRIDGE_FILE SOCKET -- command...", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("sandbox_bridge", bridge_file)
    assert spec is not None and spec.loader is not None
    bridge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bridge)
    bridge.start_bridge(bridge.PROXY_PORT, socket_path)
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda received, _frame: child.send_signal(received))
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
