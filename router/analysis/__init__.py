"""The analyzer: captured records and outcomes in, a report and a promotion decision out.

``build_report`` analyses in-memory rows; :mod:`router.analysis.run` streams from files or Redis.
"""

from router.analysis.policy import Policy, load_policy, parse_policy
from router.analysis.report import build_report, report_from

__all__ = ["Policy", "build_report", "load_policy", "parse_policy", "report_from"]
