"""A package install runs in the sandbox: the registry hosts only, nothing of the hub, its folder writable.

npm runs with `--ignore-scripts` and pip takes wheels only, so no publisher code should run
while installing; the sandbox holds even if some did. This runs the hub's own interpreter
as the "installer" inside the same confinement `PackageStore` gives npm and pip.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mcp_hub.egress import EgressGuard
from mcp_hub.egress_proxy import EgressProxy
from mcp_hub.errors import PackageInstallFailed
from mcp_hub.installer import PackageStore
from mcp_hub.packages import Package
from mcp_hub.sandbox import Sandbox
from mcp_hub.settings import Settings
from mcp_hub.sources import Sources, parse_pip_config

PROBE = """
import json, os, socket, sys, urllib.request
folder, data = sys.argv[1], sys.argv[2]
seen = {}
for name, url in (("registry", "https://registry.npmjs.org/"), ("other", "https://example.com/")):
    try:
        seen[name] = urllib.request.urlopen(url, timeout=20).status
    except Exception as exc:
        seen[name] = str(getattr(exc, "code", None) or getattr(exc, "reason", None) or exc)
for name, port in (("postgres", 5432), ("redis", 6379)):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        seen[name] = "connected"
    except OSError as exc:
        seen[name] = type(exc).__name__
seen["records"] = os.path.exists(os.path.join(data, "records.sqlite3"))
seen["uid"] = os.getuid()
open(os.path.join(folder, "probe.json"), "w").write(json.dumps(seen))
"""


async def test_an_install_reaches_only_its_registry_and_writes_only_its_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "records.sqlite3").write_text("secret records")
    tmp_path.chmod(0o755)  # pytest's 0700 folder would hide the bound install folder from the sandbox's uid
    settings = Settings.load(data_dir=data)
    store = PackageStore(data / "packages", sources=Sources())
    package = Package(registry="npm", identifier="probe", version="1.0.0")
    folder, scratch = store.folder(package), data / "packages" / "scratch"
    for path in (folder, scratch):
        path.mkdir(parents=True)
    async with EgressProxy(EgressGuard()) as proxy:
        store.use(Sandbox(settings.sandbox_bwrap, uid=settings.sandbox_uid, hidden=[data]), proxy,
                  base_env=settings.sandbox_base_env)
        await store._run([sys.executable, "-c", PROBE, str(folder), str(data)], package, folder, scratch, "acme/x",
                         hosts=["registry.npmjs.org"], readonly=())
        seen = json.loads((folder / "probe.json").read_text())
        assert seen["registry"] == 200 and "403" in str(seen["other"]), seen  # the egress proxy: the registry only
        assert seen["postgres"] != "connected" and seen["redis"] != "connected", seen
        assert seen["records"] is False, seen  # the hub's data folder is out of sight
        with pytest.raises(PackageInstallFailed, match="exit 3 from the installer"):
            await store._run([sys.executable, "-c", "import sys; print('exit 3 from the installer', file=sys.stderr);"
                              "sys.exit(3)"], package, folder, scratch, "acme/x", hosts=(), readonly=())


def test_pip_sources_come_from_pip_config() -> None:
    options = parse_pip_config("global.index-url='https://mirror.example/simple'\n"
                               "global.extra-index-url='file:///opt/pypi/simple https://extra.example/simple'\n"
                               ":env:.find-links='/opt/wheels'\n:env:.cert='/etc/ssl/certs/ca.crt'\nnonsense\n")
    sources = Sources(index_url=options["index-url"], extra_index_urls=tuple(options["extra-index-url"].split()),
                      find_links=tuple(options["find-links"].split()), cert=options["cert"])
    assert sources.pip_hosts == ("mirror.example", "extra.example")
    assert sources.pip_paths == (Path("/opt/pypi/simple"), Path("/opt/wheels"), Path("/etc/ssl/certs/ca.crt"))
    assert sources.pip_arguments[:2] == ["--index-url", "https://mirror.example/simple"]
    assert Sources().pip_hosts == ("pypi.org", "files.pythonhosted.org") and Sources().npm_hosts == ("registry.npmjs.org",)
