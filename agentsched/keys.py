"""Names of every Redis key agentsched uses, in one place.

arq's own keys (`arq:job:<id>`, `arq:in-progress:<id>`, `arq:retry:<id>`, `arq:abort`)
keep arq's fixed names; job ids are execution ids (uuid hex), so apps never collide.
"""

from __future__ import annotations

from dataclasses import dataclass

from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    retry_key_prefix,
)


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one prefix and one app."""

    prefix: str
    app: str

    @property
    def queue(self) -> str:
        """The arq queue (sorted set) of this app's jobs."""
        return f"{self.prefix}queue:{self.app}"

    @property
    def running(self) -> str:
        """Set of this app's execution ids that hold a lease."""
        return f"{self.prefix}running:{self.app}"

    @property
    def workers(self) -> str:
        """Sorted set: worker id -> last heartbeat (ms)."""
        return f"{self.prefix}workers:{self.app}"

    def worker_info(self, worker_id: str) -> str:
        """Hash of one worker: `started` (ms), `running`, `done` (expires with it)."""
        return f"{self.prefix}worker:{self.app}:{worker_id}"

    @property
    def settling(self) -> str:
        """Set for a moment after an outage: no recovery of leases that ran out meanwhile."""
        return f"{self.prefix}settling:{self.app}"

    @property
    def records(self) -> str:
        """Stream of execution snapshots waiting to be written to SQL (all apps)."""
        return f"{self.prefix}records"

    @property
    def events(self) -> str:
        """The event bus stream (all apps)."""
        return f"{self.prefix}events"

    @property
    def wake(self) -> str:
        """Pub/sub channel (not a key): a job is due or a cancel waits, look now."""
        return f"{self.prefix}wake:{self.app}"

    @property
    def idle(self) -> str:
        """Sorted set: `<worker id>|<lease ms>` of an idle worker -> until when (ms) the
        enqueue script may hand it a job (see status_scripts.ENQUEUE)."""
        return f"{self.prefix}idle:{self.app}"

    @property
    def schedules_changed(self) -> str:
        """A counter every change of this app's schedules bumps (scheduling/changes.py)."""
        return f"{self.prefix}schedules:{self.app}"

    def handoff(self, worker_id: str) -> str:
        """Pub/sub channel of one worker: the jobs an enqueue claimed for it."""
        return f"{self.prefix}wake:{self.app}:{worker_id}"

    @property
    def abort(self) -> str:
        return abort_jobs_ss

    def execution(self, execution_id: str) -> str:
        return f"{self.prefix}x:{execution_id}"

    def lease(self, execution_id: str) -> str:
        return f"{self.prefix}lease:{execution_id}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}idem:{self.app}:{key}"

    def exec_prefix(self) -> str:
        return f"{self.prefix}x:"

    def lease_prefix(self) -> str:
        return f"{self.prefix}lease:"

    @staticmethod
    def job(execution_id: str) -> str:
        return job_key_prefix + execution_id

    @staticmethod
    def in_progress(execution_id: str) -> str:
        return in_progress_key_prefix + execution_id

    @staticmethod
    def retry(execution_id: str) -> str:
        return retry_key_prefix + execution_id
