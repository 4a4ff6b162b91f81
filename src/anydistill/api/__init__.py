"""The Python API: models and data a caller holds in, a distilled student out (docs/python-api.md)."""

from anydistill.api.distill import distill
from anydistill.api.result import DistillResult

__all__ = ["DistillResult", "distill"]
