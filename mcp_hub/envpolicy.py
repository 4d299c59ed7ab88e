"""Which environment variables a hosted server may be given, and which package arguments.

A hosted server's environment is a fixed base the hub chooses (`PATH`, `HOME`, `LANG`, CA
settings) plus the variables its version declares and its credential connections render.
Declared names must not change how a runtime, the dynamic loader, a shell or a package
tool behaves: `NODE_OPTIONS=--import=data:...`, `LD_PRELOAD=...` or `PATH=/tmp/evil` turn
a publisher's configuration into code running before (or instead of) the server, outside
anything the hub checked. Such names are refused where they enter (registration, server.json
import, connection templates, `registry.yaml`), by exact name or by pattern; the comparison
ignores case, because several tools read both spellings (`http_proxy`, `npm_config_*`).

Everything else is an ordinary application variable (`API_BASE_URL`, `TIMEZONE`, `LOG_LEVEL`)
and passes, as long as the name is a plain identifier and the value a bounded, printable text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}", re.ASCII)  # used with fullmatch: no trailing newline
MAX_VALUE_CHARS = 16 * 1024
MAX_VARIABLES = 128
MAX_ARGUMENTS = 64
MAX_ARGUMENT_CHARS = 4096
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every C0 control but tab, and DEL

# Exact names (upper-case). Grouped by what they take over.
DENIED_NAMES = frozenset({
    # where programs and files are found, and the hub-chosen base
    "PATH", "HOME", "TMPDIR", "TMP", "TEMP", "TEMPDIR", "SHELL", "CLASSPATH", "TCLLIBPATH",
    # shells: startup files and hooks that run code
    "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "IFS", "CDPATH", "GLOBIGNORE",
    "ZDOTDIR", "INPUTRC",
    # programs other programs run on their behalf
    "EDITOR", "VISUAL", "PAGER", "MANPAGER", "BROWSER", "LESSOPEN", "LESSCLOSE", "SSH_ASKPASS",
    "SSH_ASKPASS_REQUIRE", "SSH_AUTH_SOCK", "ELECTRON_RUN_AS_NODE", "COVERAGE_PROCESS_START", "VIRTUAL_ENV",
    # glibc: conversion modules, locale data, resolver
    "GCONV_PATH", "LOCPATH", "NLSPATH", "GLIBC_TUNABLES", "HOSTALIASES", "RESOLV_HOST_CONF", "RES_OPTIONS",
    "LOCALDOMAIN",
    # the network path out of the sandbox, and whom TLS trusts (both set by the hub)
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "FTP_PROXY", "WS_PROXY", "WSS_PROXY", "GRPC_PROXY",
    "SOCKS_PROXY", "SOCKS5_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSLKEYLOGFILE", "CURL_HOME", "WGETRC",
    # Ruby's and Lua's load paths and startup code (the prefixes below take the rest)
    "GEM_HOME", "GEM_PATH", "BUNDLE_GEMFILE",
})

# Name prefixes (upper-case): whole families that configure a loader, runtime or package tool.
DENIED_PREFIXES = (
    "LD_", "DYLD_", "MALLOC_",                       # the dynamic loader and allocator (preload, audit, tunables)
    "NODE_", "NPM_", "YARN_", "PNPM_", "COREPACK_", "BUN_", "DENO_",  # Node: options, module paths, npm config
    "PYTHON", "PIP_", "PIPX_", "UV_", "CONDA", "POETRY_", "COV_CORE_",  # Python: startup, paths, installers
    "PERL", "RUBY", "LUA_",                           # other interpreters' options and library paths
    "JAVA_", "_JAVA_", "JDK_", "DOTNET_", "COMPLUS_", "CORECLR_",  # JVM and .NET agents, profilers
    "GIT_", "OPENSSL_", "SSL_CERT_",                  # git's helpers and config, OpenSSL engines, CA paths
    "XDG_", "DBUS_",                                  # where config files are read from, session buses
    "MCP_HUB_",                                       # the hub's own settings and what it passes children
)

# Names of the families above that only select a mode and change no loading.
ALLOWED_NAMES = frozenset({"NODE_ENV", "NODE_NO_WARNINGS"})


def denied_reason(name: str) -> str | None:
    """Why `name` may not be set for a hosted server, or None when it may."""
    if not NAME_RE.fullmatch(name):
        return "a variable name is letters, digits and '_' (not starting with a digit), at most 128 characters"
    upper = name.upper()
    if upper in ALLOWED_NAMES:
        return None
    if upper in DENIED_NAMES or upper.startswith(DENIED_PREFIXES):
        return "it changes how a runtime, loader, shell or package tool behaves, or it is set by the hub"
    return None


def value_problem(value: str) -> str | None:
    """What is wrong with an environment value or package argument, or None."""
    if len(value) > MAX_VALUE_CHARS:
        return f"longer than {MAX_VALUE_CHARS} characters"
    if _CONTROL.search(value):
        return "it contains control characters (NUL, newline, ...)"
    return None


def env_problems(env: Mapping[str, str], where: str) -> Iterable[tuple[str, str]]:
    """(variable, message) for every name or value of `env` that is not allowed; `where` says whose env."""
    if len(env) > MAX_VARIABLES:
        yield "", f"{where} declares {len(env)} variables; at most {MAX_VARIABLES}"
    for name, value in env.items():
        reason = denied_reason(name)
        if reason is not None:
            yield name, f"{where}: environment variable {name[:128]!r} is not allowed: {reason}"
            continue
        problem = value_problem(value)
        if problem is not None:
            yield name, f"{where}: the value of {name} is not allowed: {problem}"


def argument_problem(arguments: Iterable[str]) -> str | None:
    """What is wrong with a package's argument list, or None (arguments are data for the server)."""
    arguments = list(arguments)
    if len(arguments) > MAX_ARGUMENTS:
        return f"at most {MAX_ARGUMENTS} arguments"
    for index, argument in enumerate(arguments):
        if len(argument) > MAX_ARGUMENT_CHARS:
            return f"argument {index} is longer than {MAX_ARGUMENT_CHARS} characters"
        if _CONTROL.search(argument):
            return f"argument {index} contains control characters (NUL, newline, ...)"
    return None
