"""The jobs actor: open jobs on JetStream (:mod:`.actor` its API, :mod:`.model` what it
stores and answers, :mod:`.store` the JetStream side, :mod:`.runner` the slice workers)."""

from .actor import Jobs
from .model import JobOptions, JobStatus, SliceResult

__all__ = ["JobOptions", "JobStatus", "Jobs", "SliceResult"]
