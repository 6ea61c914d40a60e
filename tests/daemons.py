"""Real daemons for the cluster tests, on loopback, started in the foreground and stopped by the caller.

* ``slurm_node``: a one-node Slurm (munged, slurmctld -D, slurmd -D) from Debian's packages, with its
  own munge key, socket, ports and state folder, configured through ``SLURM_CONF`` so it never
  touches /etc/slurm or a system munged;
* PostgreSQL and ``mlflow server`` come from ``nnlab.server`` (what the README tells a lab to run).

``missing_binaries`` says which executables a fixture lacks: the tests skip with that reason, or
fail under ``CI=true`` (CI installs them, see .ci/run).

``SERVER_ENV`` is added to the environment of every ``mlflow server`` the tests start. MLflow 3 starts a
job runner beside the server by default (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``: a Huey consumer process per
GenAI job type, each importing MLflow), which nnlab never uses; on 2 cores those imports compete with the
server's own start-up and with the test. With it off, the server that answers is the same tracking server.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from nnlab.server import free_port, stop

SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
SLURM_BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo")
NODE = "nnlabnode"


def _find(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name)
                                       if p.exists()), None)


def missing_binaries(names) -> list[str]:
    return [n for n in names if _find(n) is None]


def skip_or_fail(reason: str) -> None:
    """Skip, except in CI (CI=true), where a missing daemon is a broken set-up: fail."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason} (.ci/run installs it)")
    pytest.skip(reason)


@dataclass
class SlurmNode:
    folder: Path
    conf: Path

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to talk to this Slurm (sbatch, squeue, submitit)."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout)

    def log(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.folder.glob("*.log")))


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def _slurm_conf(folder: Path, ctl_port: int, node_port: int) -> str:
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    return f"""\
# one node on 127.0.0.1, written by tests/daemons.py
ClusterName=nnlabtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
KillWait=5
MinJobAge=300
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={cpus} RealMemory={_memory_mb() - 512} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def slurm_node(timeout: float = 60) -> Iterator[SlurmNode]:
    """munged + slurmctld + slurmd for one node on 127.0.0.1; yields once the node is idle; stops all three."""
    folder = Path(tempfile.mkdtemp(prefix="nnlab-slurm-"))
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir()
    (folder / "munge").chmod(0o700)
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, free_port(), free_port()))
    node = SlurmNode(folder, conf)
    env = {**os.environ, **node.env}
    processes: list[subprocess.Popen] = []
    try:
        subprocess.run([_find("mungekey"), "--create", f"--keyfile={folder}/munge/munge.key"], check=True,
                       capture_output=True)
        munge = [_find("munged"), "--foreground", "--force", f"--socket={folder}/munge/munge.socket",
                 f"--key-file={folder}/munge/munge.key", f"--pid-file={folder}/munge/munged.pid",
                 f"--log-file={folder}/munged.log", f"--seed-file={folder}/munge/munged.seed"]
        processes.append(_start(munge, env, folder / "munged.out"))
        _wait_for(lambda: (folder / "munge" / "munge.socket").exists(), "munged's socket", timeout, processes, node)
        processes.append(_start([_find("slurmctld"), "-D", "-i", "-f", str(conf)], env, folder / "slurmctld.out"))
        processes.append(_start([_find("slurmd"), "-D", "-N", NODE, "-f", str(conf)], env, folder / "slurmd.out"))
        _wait_for(lambda: node.run("sinfo", "-h", "-N", "-o", "%t").stdout.strip() == "idle",
                  f"node {NODE} idle in sinfo", timeout, processes, node)
        yield node
    finally:
        for process in reversed(processes):  # slurmd, slurmctld, munged
            stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def _start(cmd: list[str], env: dict, out: Path) -> subprocess.Popen:
    with open(out, "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _wait_for(ready, what: str, timeout: float, processes: list[subprocess.Popen], node: SlurmNode) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{dead[0].args[0]} exited with {dead[0].returncode} while waiting for {what}\n"
                               + node.log() + "".join(p.read_text()[-2000:] for p in node.folder.glob("*.out")))
        try:
            if ready():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n" + node.log())
