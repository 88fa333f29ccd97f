"""What a new node runs: the agent's arguments, and for cloud VMs the boot
script (EC2 user data, GCE ``startup-script``) that installs and starts it.

Everything embedded here ends up in a shell script, a systemd unit, an argv
or a label, so ``check_join`` first limits the server URL, the labels and the
token to characters that need no quoting in any of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from apportion.core.resources import format_vector
from apportion.exceptions import InvalidInput
from apportion.providers.base import JoinSpec

_URL_RE = re.compile(r"^https?://[A-Za-z0-9._~:/?#\[\]@!&()*+;%=-]+$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9._:/@+-]{0,253}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{1,512}$")

WORK_DIR = "/var/lib/apportion/agent"
"""The agent's work directory on a VM, a pod or a container."""

DEFAULT_INSTALL = "python3 -m pip install --quiet apportion"


def check_join(join: JoinSpec, labels: Mapping[str, str]) -> None:
    """Refuse anything that would need quoting: the values are written into
    scripts, systemd units, argv and ``--labels k=v,...``."""
    if not _URL_RE.match(join.server_url) or "'" in join.server_url:
        raise InvalidInput(f"join.server_url: {join.server_url!r} is not an http(s) URL "
                           "without spaces or quotes", field="join.server_url")
    if not _TOKEN_RE.match(join.join_token.reveal()):
        raise InvalidInput("join.join_token: expected 1-512 URL-safe characters "
                           "(letters, digits, . _ ~ + / = -)", field="join.join_token")
    for key, value in labels.items():
        if not _LABEL_KEY_RE.match(key) or not _LABEL_VALUE_RE.match(value):
            raise InvalidInput(
                f"labels: {key}={value!r}: keys are letters, digits, '.', '_', '/', '-'; "
                "values also ':', '@', '+', and no ',' '=' or spaces", field="labels")


def agent_args(
    name: str,
    labels: Mapping[str, str],
    resources: Mapping[str, int] | None,
    work_dir: str = WORK_DIR,
) -> list[str]:
    """``agent`` arguments after the program: the server URL and token come
    from ``APPORTION_SERVER`` / ``APPORTION_TOKEN`` in the environment."""
    args = ["--name", name, "--labels", ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            "--work-dir", work_dir, "--on-exit", "stop"]
    if resources:
        args += ["--resources", ",".join(f"{k}={v}" for k, v in format_vector(resources).items())]
    return args


def startup_script(
    join: JoinSpec,
    name: str,
    labels: Mapping[str, str],
    resources: Mapping[str, int] | None,
    install: str = DEFAULT_INSTALL,
    agent_command: str = "apportion agent",
) -> str:
    """A bash script for a fresh Linux VM: keep the join token in a root-only
    file the agent reads (``APPORTION_TOKEN_FILE``: never in its environment
    or on its command line), install apportion, run the agent as a systemd
    service (``Delegate=yes`` so it can confine tasks with cgroup v2). Its
    tasks run as ``nobody``; ``/var/lib/apportion`` stays searchable (0711)
    so they reach their directories under the work directory."""
    check_join(join, labels)
    args = " ".join(agent_args(name, labels, resources))
    return f"""#!/bin/bash
# apportion node bootstrap for {name}
set -euo pipefail
umask 077
mkdir -p /etc/apportion {WORK_DIR}
chmod 711 {WORK_DIR.rsplit("/", 1)[0]}
cat > /etc/apportion/agent.token <<'APPORTION_EOF'
{join.join_token.reveal()}
APPORTION_EOF
cat > /etc/apportion/agent.env <<'APPORTION_EOF'
APPORTION_SERVER={join.server_url}
APPORTION_TOKEN_FILE=/etc/apportion/agent.token
APPORTION_EOF
{install}
cat > /etc/systemd/system/apportion-agent.service <<'APPORTION_EOF'
[Unit]
Description=apportion agent
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/apportion/agent.env
ExecStart=/usr/bin/env {agent_command} {args}
Restart=on-failure
RestartSec=5
Delegate=yes
KillMode=mixed
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
APPORTION_EOF
systemctl daemon-reload
systemctl enable --now apportion-agent.service
"""
