"""Running a CNI chain as libcni does, with Debian's real plugins.

``Chain`` execs each plugin of a conflist with the network's name and
cniVersion merged into the plugin's object and, from the second plugin on,
the previous plugin's result as ``prevResult``; DEL runs the plugins in
reverse and CHECK in order, both with the cached result of ADD, as libcni
does. The plugins run inside the lab's "host" namespace (``ip netns exec``),
so the bridge and its veths are made there and never in the real root
namespace; the container namespace is one the test created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

DEBIAN_CNI_DIR = Path("/usr/lib/cni")
GUESTFENCE_CNI = Path(sys.executable).with_name("guestfence-cni")


def plugin_dir(where: Path) -> Path:
    """A CNI_PATH holding Debian's bridge and host-local and our plugin, under its CNI name."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("bridge", "host-local"):
        (where / name).symlink_to(DEBIAN_CNI_DIR / name)
    (where / "guestfence").symlink_to(GUESTFENCE_CNI)
    return where


class PluginFailed(AssertionError):
    def __init__(self, plugin: str, command: str, done: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"{plugin} {command} exited {done.returncode}: {done.stdout} {done.stderr}")
        self.error = json.loads(done.stdout) if done.stdout.strip().startswith("{") else None
        self.returncode = done.returncode


class Chain:
    def __init__(self, conflist: dict[str, Any], *, host_netns: str, container_netns: str, cni_path: Path,
                 container_id: str, ifname: str = "eth0") -> None:  # fmt: skip
        self.conflist = conflist
        self.host_netns = host_netns
        self.container_netns = container_netns
        self.cni_path = cni_path
        self.container_id = container_id
        self.ifname = ifname
        self.cached: dict[str, Any] | None = None

    def exec_plugin(self, plugin: dict[str, Any], command: str, prev: dict[str, Any] | None) -> dict[str, Any] | None:
        config = {**plugin, "cniVersion": self.conflist["cniVersion"], "name": self.conflist["name"]}
        if prev is not None:
            config["prevResult"] = prev
        env = {
            **os.environ,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": f"/run/netns/{self.container_netns}",
            "CNI_IFNAME": self.ifname,
            "CNI_ARGS": "",
            "CNI_PATH": str(self.cni_path),
        }
        binary = str(self.cni_path / plugin["type"])
        done = subprocess.run(["ip", "netns", "exec", self.host_netns, binary], input=json.dumps(config),
                              env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        if done.returncode != 0:
            raise PluginFailed(plugin["type"], command, done)
        return json.loads(done.stdout) if done.stdout.strip() else None

    def add(self) -> dict[str, Any]:
        result: dict[str, Any] | None = None
        for plugin in self.conflist["plugins"]:
            result = self.exec_plugin(plugin, "ADD", result)
        assert result is not None
        self.cached = result
        return result

    def check(self) -> None:
        for plugin in self.conflist["plugins"]:
            self.exec_plugin(plugin, "CHECK", self.cached)

    def delete(self) -> None:
        for plugin in reversed(self.conflist["plugins"]):
            self.exec_plugin(plugin, "DEL", self.cached)
