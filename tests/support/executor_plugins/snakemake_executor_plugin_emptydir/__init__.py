"""A Snakemake executor for the tests that runs every job as a cloud executor does, here.

Google Batch and Kubernetes start each job in a fresh container whose working directory is
empty: the job deploys the workflow's sources from the default storage, fetches its declared
inputs from it, runs, and uploads its declared outputs; nothing else survives the job.  This
executor keeps exactly those rules with Snakemake's own remote-job machinery (the common
settings of the Kubernetes plugin, the command from ``format_job_exec``), but runs the job as a
local process in a new empty directory instead of a pod.  What it cannot show: the container
image, the VM and GPU requests (the profile tests check those settings).

One difference from those plugins: ``auto_deploy_default_storage_provider`` is off, because
the storage plugin is installed here already and a job cannot reach PyPI.  The job's
environment is a pod's: PATH (the image's software, here the test's virtual environment) and
only the variables Snakemake passes on.

Found by Snakemake's plugin registry when ``tests/support/executor_plugins`` is on ``PYTHONPATH``
(``--executor emptydir``).  Each job's output goes to ``<root>/job<id>-<random>.log`` and what
it asked for (rule, threads, resources) to the ``.json`` beside it, where ``root`` is
``$SPINE_IDC_EMPTYDIR_ROOT`` (or a temporary folder).  With ``$SPINE_IDC_EMPTYDIR_PREEMPT=<rule>``
the first job of that rule is killed once its command is running, as a reclaimed spot VM's
would be.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import AsyncGenerator, List

from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import CommonSettings

common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=True,
    job_deploy_sources=True,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    pass_envvar_declarations_to_cmd=False,
    auto_deploy_default_storage_provider=False,
    init_seconds_before_status_checks=1,
)


class Executor(RemoteExecutor):
    def __post_init__(self):
        given = os.environ.get("SPINE_IDC_EMPTYDIR_ROOT")
        self.root = Path(given) if given else Path(tempfile.mkdtemp(prefix="emptydir-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._preempted = False

    def run_job(self, job: JobExecutorInterface):
        workdir = Path(tempfile.mkdtemp(prefix=f"job{job.jobid}-", dir=self.root))
        log_path = self.root / f"{workdir.name}.log"
        command = self.format_job_exec(job)
        # What a cloud executor would have asked its scheduler for, for the tests to check.
        asked = {"rule": job.name, "threads": job.threads,
                 "resources": {k: v for k, v in job.resources.items() if not k.startswith("_")}}
        (self.root / f"{workdir.name}.json").write_text(json.dumps(asked, default=str))
        with open(log_path, "w") as log:
            log.write(command + "\n\n")
            log.flush()
            process = subprocess.Popen(["/bin/sh", "-c", command], cwd=workdir, env=self._env(workdir),
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.report_job_submission(SubmittedJobInfo(
            job, external_jobid=str(process.pid),
            aux={"process": process, "workdir": workdir, "log": log_path}))
        if job.name == os.environ.get("SPINE_IDC_EMPTYDIR_PREEMPT") and not self._preempted:
            self._preempted = True
            threading.Thread(target=self._preempt, args=(job.name, process, workdir), daemon=True).start()

    def _preempt(self, rule: str, process: subprocess.Popen, workdir: Path) -> None:
        """Kill the job (SIGKILL to its whole process group, as when a spot VM is reclaimed)
        once its rule's command has started writing its log; note it in ``<root>/preempted``."""
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            if any(p.stat().st_size for p in workdir.glob(f".snakemake/storage/**/logs/{rule}/*.log")):
                os.killpg(process.pid, signal.SIGKILL)
                (self.root / "preempted").write_text(f"{rule} {workdir.name}\n")
                return
            time.sleep(0.05)

    def _env(self, workdir: Path) -> dict[str, str]:
        """A pod's environment: the image's PATH, and only what Snakemake passes on (its
        ``envvars``), plus the names in ``$SPINE_IDC_EMPTYDIR_PASS`` (comma-separated: what the
        cluster itself would provide, such as the storage emulator's address)."""
        env = {"PATH": os.environ["PATH"], "HOME": str(workdir), "LANG": "C.UTF-8"}
        passed = [n for n in os.environ.get("SPINE_IDC_EMPTYDIR_PASS", "").split(",") if n]
        for name in ("PYTHONPATH", *passed):
            if name in os.environ:
                env[name] = os.environ[name]
        env.update(self.envvars())
        return env

    async def check_active_jobs(
        self, active_jobs: List[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        for info in active_jobs:
            code = info.aux["process"].poll()
            if code is None:
                yield info
                continue
            if code == 0:
                self.report_job_success(info)
            else:
                self.report_job_error(info, msg=f"job process exited with {code}",
                                      aux_logs=[str(info.aux["log"])])
            # Like a finished pod: its working directory is gone.
            shutil.rmtree(info.aux["workdir"], ignore_errors=True)

    def cancel_jobs(self, active_jobs: List[SubmittedJobInfo]):
        for info in active_jobs:
            if info.aux["process"].poll() is None:
                info.aux["process"].terminate()
