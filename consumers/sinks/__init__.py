"""PostgreSQL sinks: results (with requests) and feedback, batched, idempotent, outage-tolerant."""

from __future__ import annotations

from radstream.consumers.sinks.feedback import feedback_spec
from radstream.consumers.sinks.results import results_spec
from radstream.consumers.sinks.runner import SinkRunner, SinkSpec, SinkStats

__all__ = ["SinkRunner", "SinkSpec", "SinkStats", "feedback_spec", "results_spec"]
