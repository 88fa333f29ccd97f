"""Every ``apportion`` command, run once as a real subprocess against one real
server (with an ``advice`` node pool, so the ``scale`` commands have a pool to
show): exit code 0 and a literal piece of what it prints. The command list
comes from the typer app itself, so a new command without a row here fails
``test_the_table_covers_every_command``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from apportion.cli.main import app
from apportion.client import Client
from e2e.cluster import wait_for
from support import ServerProcess

# Commands this file does not run, and why. Each still runs elsewhere.
EXCLUDED = {
    # Runs until stopped, discovers this machine and runs tasks on it: the
    # e2e clusters (tests/e2e/cluster.py) and `up` below start real agents.
    "agent",
    # Serves until stopped: every server in this suite (this module's too) is
    # `python -m apportion.cli.main server` (tests/support.py ServerProcess).
    "server",
    # A server plus a real agent for this machine, until Ctrl-C:
    # tests/cli/test_cli.py::test_up_serves_registers_this_machine_and_configures_the_cli.
    "up",
}

POOL_CONFIG = """
[scaling]
interval_s = 3600

[providers.lab]
kind = "local"
state_dir = "{state_dir}"
# Advice only: nothing is ever started; were it, it would exit at once.
command = ["{{python}}", "-c", "raise SystemExit(3)"]

[[providers.lab.node_types]]
name = "c4"
resources = {{ cpu = "4", memory = "8Gi" }}
price_per_hour = 0.5

[[pools]]
name = "lab-pool"
provider = "lab"
node_type = "c4"
min_size = 0
max_size = 4
mode = "advice"
"""

SWF = """\
; MaxNodes: 4
; MaxProcs: 4
1 0 5 100 3 -1 -1 3 100 -1 1 1 1 -1 -1 -1 -1 -1
2 10 -1 50 4 -1 -1 4 60 -1 1 2 2 -1 -1 -1 -1 -1
"""


def command_paths() -> set[str]:
    """Every command the app has, as typed: ``nodes list``, ``submit``."""
    root = typer.main.get_command(app)
    found: set[str] = set()

    def walk(command: Any, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            if not command.hidden:
                found.add(" ".join(path))
            return
        for name, sub in subcommands.items():
            walk(sub, [*path, name])

    walk(root, [])
    return found


@dataclass(frozen=True)
class Made:
    """What the fixture made for the commands to act on."""

    url: str
    token: str
    data_dir: Path
    ids: dict[str, str]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Made]:
    data_dir = tmp_path_factory.mktemp("every-command")
    config = data_dir / "server.toml"
    config.write_text(POOL_CONFIG.format(state_dir=data_dir / "pool-state"))
    server = ServerProcess(data_dir, extra_env={
        "APPORTION_CONFIG_FILE": str(config),
        # agent-1 never sends a heartbeat: it must not go down (and raise an
        # alert that `top` would show) however slowly this module runs.
        "APPORTION_NODE_DOWN_AFTER": "86400"}).start()
    try:
        with Client(server.url, server.token) as c:
            for name, facility in (("n1", "lab"), ("n-drain", "spare"),
                                   ("n-cordon", "spare"), ("n-remove", "spare")):
                c.register_node({"name": name, "resources": {"cpu": "8", "memory": "16Gi"},
                                 "labels": {"facility": facility, "type": "cpu"}})
            with server.client() as http:
                registered = http.post("/api/v1/agents/register", json={
                    "node": {"name": "agent-1", "resources": {"cpu": "1", "memory": "1Gi"},
                             "labels": {"facility": "agents"}},
                    "agent": {"id": "agent-1-id"}})
                assert registered.status_code == 200, registered.text
            c.put_queue({"name": "research", "quota": {"cpu": "16"}, "weight": 2.0},
                        create=True)
            on_lab = ["facility=lab"]
            lease = c.submit_job({"resources": {"cpu": "1"}, "name": "lease-job",
                                  "queue": "research", "constraints": on_lab})
            wait_for("the lease job to run",
                      lambda: c.get_job(lease["id"])["state"] == "running", 60)
            # Its output, sent the way an agent sends a task's output.
            [task] = c.get_job(lease["id"])["tasks"]
            with server.client() as http:
                for stream, text in (("stdout", "hello from the lease\n"),
                                     ("stderr", "a warning\n")):
                    pushed = http.post(f"/api/v1/agents/n1/tasks/{task['id']}/logs/{stream}",
                                       params={"offset": 0}, content=text.encode())
                    assert pushed.status_code == 200, pushed.text
            # All of n1's cpu but the lease's: it waits until the lease ends.
            waiting = c.submit_job({"resources": {"cpu": "8"}, "name": "waiting-job",
                                    "constraints": on_lab})
            to_cancel = c.submit_job({"resources": {"cpu": "8"}, "name": "cancel-me",
                                      "constraints": on_lab})
            alloc = c.allocate({"cpu": "1"}, node="n1", owner="releaser")
            c.create_token("to-revoke", "user")
        trace = data_dir / "trace.swf"
        trace.write_text(SWF)
        yield Made(server.url, server.token, data_dir, {
            "lease": lease["id"], "waiting": waiting["id"], "cancel": to_cancel["id"],
            "alloc": alloc["id"], "trace": str(trace)})
    finally:
        server.stop()


def run(made: Made, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPORTION_")}
    env.update({"APPORTION_SERVER": made.url, "APPORTION_TOKEN": made.token,
                "APPORTION_CONFIG": str(made.data_dir / "no-cli-config.toml"),
                "COLUMNS": "400"})  # one table row per line
    return subprocess.run([sys.executable, "-m", "apportion.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _prints_exactly(out: str, expected: str) -> None:
    assert out == expected + "\n"


def _authenticates_as(made: Made, out: str, name: str, role: str) -> None:
    """The printed token is the whole output, and the server knows it."""
    token = out.strip()
    assert out == token + "\n"
    assert token.startswith("apt_")
    with Client(made.url, token) as c:
        who = c.whoami()
    assert (who["name"], who["role"]) == (name, role)


def _exactly(proc: Ran, stdout: str, stderr: str) -> None:
    assert (proc.stdout, proc.stderr) == (stdout, stderr)


Ran = subprocess.CompletedProcess[str]
Check = str | Callable[[Ran, Made], None]

# (command, arguments, a literal piece of its output or a check of it).
# Arguments and pieces name what the fixture made as {lease}, {waiting},
# {cancel}, {alloc}, {trace}.
INVOCATIONS: list[tuple[str, list[str], Check]] = [
    ("nodes list", ["nodes", "list"], "n-cordon"),
    ("nodes show", ["nodes", "show", "n1"], 'labels={{"facility": "lab", "type": "cpu"}}'),
    ("nodes add", ["nodes", "add", "n-added", "--resources", "cpu=2,memory=4Gi",
                   "--labels", "facility=spare"],
     "registered node n-added: cpu=2,memory=4Gi"),
    ("nodes update", ["nodes", "update", "n-added", "--labels", "facility=spare,tier=b"],
     "updated node n-added: cpu=2,memory=4Gi; labels facility=spare,tier=b"),
    ("nodes remove", ["nodes", "remove", "n-remove"],
     "deleted node n-remove; released 0 allocation(s)"),
    ("nodes drain", ["nodes", "drain", "n-drain"], "n-drain: draining"),
    ("nodes cordon", ["nodes", "cordon", "n-cordon"], "n-cordon: cordoned"),
    ("nodes uncordon", ["nodes", "uncordon", "n-cordon"], "n-cordon: ready"),
    ("nodes rescan", ["nodes", "rescan", "agent-1"], "agent-1: rescan requested"),
    ("allocations list", ["allocations", "list", "--owner", "releaser"],
     "1 allocation(s)"),
    ("alloc", ["alloc", "--cpu", "1", "--node", "n1", "--owner", "cli"], "on n1: cpu=1"),
    ("release", ["release", "{alloc}"], "released {alloc} on n1 (released at "),
    ("capacity", ["capacity"], "capacity by resource"),
    ("alerts", ["alerts", "--state", "resolved"], "0 alert(s)"),
    ("servers", ["servers"], "1 server(s)"),
    ("token create", ["token", "create", "--name", "made-by-cli"],
     lambda proc, made: _authenticates_as(made, proc.stdout, "made-by-cli", "user")),
    ("token list", ["token", "list"], "to-revoke"),
    ("token show", ["token", "show"], lambda proc, made: _prints_exactly(proc.stdout, made.token)),
    ("token revoke", ["token", "revoke", "to-revoke"], "revoked 1 token(s) called to-revoke"),
    # The link alone on stdout; the browser side: tests/dashboard/test_dashboard.py.
    ("dashboard", ["dashboard"], "/#code=apc_"),
    ("submit", ["submit", "--cpu", "1", "--name", "cli-job", "-c", "facility=lab"],
     "to queue default"),
    ("jobs list", ["jobs", "list", "--queue", "research"], "lease-job"),
    ("jobs show", ["jobs", "show", "{lease}"], "lease-job"),
    ("jobs explain", ["jobs", "explain", "{waiting}"], "{waiting}: busy — "),
    ("jobs cancel", ["jobs", "cancel", "{cancel}"], "{cancel}: cancelled"),
    # stdout to stdout (stderr to stderr): exactly what was sent.
    ("jobs logs", ["jobs", "logs", "{lease}"],
     lambda proc, made: _exactly(proc, "hello from the lease\n", "a warning\n")),
    ("queues list", ["queues", "list"], "research"),
    ("queues create", ["queues", "create", "batch", "--quota", "cpu=4"],
     "queue batch created"),
    ("queues update", ["queues", "update", "research", "--weight", "3"],
     "queue research updated"),
    ("events", ["events", "--after", "0", "--kind", "node.registered"],
     'n1 {{"resources":{{"cpu":8000,"memory":17179869184}}}}'),
    ("top", ["top", "--once"], "alerts: nothing firing"),
    ("history", ["history", "utilization"], "utilization over 3600 s"),
    ("forecast", ["forecast", "--days", "7"], "forecast by resource, 7 days ahead"),
    ("predict", ["predict", "lease-job"], "prediction for lease-job"),
    # Offline: it replays a trace file and needs no server.
    ("simulate", ["simulate", "{trace}", "--no-progress"],
     "trace.swf: 2 jobs simulated on 4 nodes, 0 dropped"),
    ("scale plan", ["scale", "plan"], "│ lab-pool │ lab (local) │ advice │ 0 [0–4]"),
    ("scale pools", ["scale", "pools"], "pool lab-pool (lab, advice, size 0–4)"),
    ("scale evaluate", ["scale", "evaluate"], "│ lab-pool │ lab (local) │ advice │ 0 [0–4]"),
]


def test_the_table_covers_every_command() -> None:
    tested = [command for command, _, _ in INVOCATIONS]
    assert len(tested) == len(set(tested))
    assert set(tested) & EXCLUDED == set()
    commands = command_paths()
    untested = sorted(commands - set(tested) - EXCLUDED)
    gone = sorted((set(tested) | EXCLUDED) - commands)
    # A new command needs a row in INVOCATIONS (or, if it cannot run here, a
    # commented entry in EXCLUDED); a removed one, its row taken out.
    assert (untested, gone) == ([], [])


def test_the_commands_the_issue_named_are_in_the_table() -> None:
    named = {"jobs list", "jobs show", "jobs explain", "jobs cancel", "queues list",
             "queues create", "queues update", "nodes drain", "nodes cordon",
             "nodes uncordon", "nodes rescan", "alerts", "history", "top", "scale evaluate",
             "scale pools"}
    assert named <= {command for command, _, _ in INVOCATIONS}


@pytest.mark.parametrize(("command", "args", "expected"), INVOCATIONS,
                         ids=[command for command, _, _ in INVOCATIONS])
def test_command(made: Made, command: str, args: list[str], expected: Check) -> None:
    proc = run(made, [a.format(**made.ids) for a in args])
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    if callable(expected):
        expected(proc, made)
        return
    want = expected.format(**made.ids)
    assert want in proc.stdout, (want, proc.stdout, proc.stderr)
