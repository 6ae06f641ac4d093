"""The built-in benchmarks: importing this package registers each of them (one line each)."""

from obliviate.evaluation.benchmarks import harmful  # noqa: F401
from obliviate.evaluation.benchmarks import request  # noqa: F401
from obliviate.evaluation.benchmarks import rwku  # noqa: F401
from obliviate.evaluation.benchmarks import tofu  # noqa: F401
