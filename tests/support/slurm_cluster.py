"""A one-node Slurm cluster for tests: munged, slurmctld and slurmd as children of the test.

The node is this host; it has a ``cpu`` and a ``gpu`` partition and one stand-in GPU (a GRES
whose device file is ``/dev/null``), so jobs that ask for ``--gpus=1`` are scheduled, and
serialised, as on a GPU node. There is no accounting database: ``squeue`` reports finished jobs
for ``MinJobAge`` (an hour here), and ``sacct`` has nothing to say.

Slurm's client commands find the cluster through ``SLURM_CONF`` (``SlurmCluster.env``), but the
Snakemake Slurm plugin drops every ``SLURM_*`` variable before its inner ``srun``, which then
reads ``/etc/slurm/slurm.conf``. So the cluster's configuration is installed there while it runs,
and whatever was there before is put back afterwards (a file left by a test cluster that was
killed is recognised and removed). Since that file is the machine's, one test cluster runs at a
time: a second waits for the first (``ClusterBusy`` after ``wait_s``). That, and daemons that run
as root (``SlurmUser=root``), is why the cluster needs root; ``unavailable()`` says when it cannot
run. Debian packages: ``slurm-wlm`` and ``munge``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .local_process import free_port

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# spine-idc test cluster: removed when the test ends\n"
LOCK = Path("/tmp/spine-idc-slurm-cluster.lock")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")
CPU_PARTITION = "cpu"
GPU_PARTITION = "gpu"


class ClusterBusy(RuntimeError):
    """Another test cluster held this machine for longer than we would wait."""


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return f"a test Slurm cluster runs its daemons as root and installs {SYSTEM_CONF}"
    missing = [tool for tool in (*DAEMONS, *CLIENTS) if shutil.which(tool) is None]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)}): apt-get install slurm-wlm munge"
    return None


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    state: str
    partition: str
    comment: str  # the Snakemake plugin's `rule_<name>[_wildcards_<values>]`

    @property
    def rule(self) -> str:
        return self.comment.removeprefix("rule_").split("_wildcards_")[0]


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path
    node: str

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm's client commands (and Snakemake) to use this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def command(self, *args: str) -> str:
        out = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def jobs(self, name: str | None = None) -> list[SlurmJob]:
        """Every job the controller still knows (queued, running and finished), oldest first."""
        args = ["squeue", "--noheader", "--states=all", "--format=%i|%T|%P|%k"]
        if name:
            args.append(f"--name={name}")
        rows = [line.split("|", 3) for line in self.command(*args).splitlines() if line.strip()]
        jobs = [SlurmJob(*(field.strip() for field in row)) for row in rows]
        return sorted(jobs, key=lambda job: int(job.job_id))

    def details(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a mapping (JobState, Partition, TresPerJob, ...)."""
        fields = self.command("scontrol", "--oneliner", "show", "job", job_id).split()
        return dict(field.split("=", 1) for field in fields if "=" in field)

    def cancel(self, job_id: str) -> None:
        self.command("scancel", job_id)


def _real_memory_mb() -> int:
    """The node's memory as Slurm should offer it: MemTotal less 1 GiB for the system."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _slurm_conf(root: Path, node: str, munge_socket: Path) -> str:
    cpus, memory = len(os.sched_getaffinity(0)), _real_memory_mb()
    return f"""\
{MARKER}ClusterName=spineidctest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} Gres=gpu:1 State=UNKNOWN
PartitionName={CPU_PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName={GPU_PARTITION} Nodes={node} MaxTime=INFINITE State=UP
"""


def _wait(condition, what: str, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {log}\n{log.read_text()[-2000:]}" for log in logs if log.exists())
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s\n{tails}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def _one_cluster_at_a_time(wait_s: float) -> Iterator[None]:
    with open(LOCK, "w") as lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterBusy(f"another test Slurm cluster runs here ({LOCK})") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _installed_system_conf(conf: Path) -> Iterator[None]:
    """Install ``conf`` as /etc/slurm/slurm.conf for the duration, then restore the original."""
    created_dir = not SYSTEM_CONF.parent.exists()
    previous = SYSTEM_CONF.read_bytes() if SYSTEM_CONF.exists() else None
    if previous is not None and previous.startswith(MARKER.encode()):
        previous = None  # left by a test cluster that was killed
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(conf, SYSTEM_CONF)
    try:
        yield
    finally:
        if previous is None:
            SYSTEM_CONF.unlink(missing_ok=True)
            if created_dir:
                with contextlib.suppress(OSError):
                    SYSTEM_CONF.parent.rmdir()
        else:
            SYSTEM_CONF.write_bytes(previous)


@contextlib.contextmanager
def slurm_cluster(wait_s: float = 600) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd; yield once the node is idle; stop them all."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    with _one_cluster_at_a_time(wait_s):
        yield from _running_cluster()


def _running_cluster() -> Iterator[SlurmCluster]:
    node = socket.gethostname().split(".")[0]
    # Short: slurmd puts UNIX sockets in its spool folder, and their paths are limited in length.
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    processes: list[subprocess.Popen] = []
    try:
        for sub in ("munge", "state", "spool", "log"):
            (root / sub).mkdir()
        (root / "munge").chmod(0o755)  # munged's socket must be reachable by every user
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge_socket = root / "munge" / "munge.socket"
        conf = root / "slurm.conf"
        conf.write_text(_slurm_conf(root, node, munge_socket))
        (root / "gres.conf").write_text("AutoDetect=off\nName=gpu File=/dev/null\n")
        env = {**os.environ, "SLURM_CONF": str(conf)}
        logs = [root / "log" / name for name in ("munged.out", "slurmctld.log", "slurmd.log")]

        def start(*args: str, out: str) -> None:
            with open(root / "log" / out, "wb") as sink:
                processes.append(subprocess.Popen(args, env=env, stdout=sink,
                                                  stderr=subprocess.STDOUT,
                                                  start_new_session=True))

        start("munged", "--foreground", "--force", f"--socket={munge_socket}",
              f"--key-file={key}", f"--log-file={root / 'log' / 'munged.log'}",
              f"--pid-file={root / 'munge' / 'munged.pid'}",
              f"--seed-file={root / 'munge' / 'munged.seed'}", out="munged.out")
        _wait(munge_socket.exists, "munged", 15, logs)
        with _installed_system_conf(conf):
            start("slurmctld", "-D", "-i", "-f", str(conf), out="slurmctld.out")
            start("slurmd", "-D", "-f", str(conf), "-N", node, out="slurmd.out")
            cluster = SlurmCluster(conf=conf, node=node)

            def node_idle() -> bool:
                out = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%t"], env=env,
                                     capture_output=True, text=True)
                states = set(out.stdout.split())  # one line per partition
                return out.returncode == 0 and states == {"idle"}

            _wait(node_idle, "the Slurm node", 60, logs)
            try:
                yield cluster
            finally:
                # Jobs first, so that no job step outlives its slurmd.
                subprocess.run(["scancel", "--full", "--user=root"], env=env,
                               capture_output=True)
                with contextlib.suppress(RuntimeError):
                    _wait(lambda: not any(job.state in ("RUNNING", "COMPLETING", "PENDING")
                                          for job in cluster.jobs()),
                          "job cancellation", 20, [])
                for process in reversed(processes):
                    _stop(process)
    finally:
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(root, ignore_errors=True)
