"""Evaluation (method.md §5): benchmarks, generation, the five metrics, mRank and the trade-off curve."""

from .benchmarks import Benchmark, Case, load_benchmark
from .generate import GenerationConfig, generate
from .metrics import METRICS
from .rank import mrank
from .score import ScoreConfig, Scorer, score_results

__all__ = [
    "METRICS",
    "Benchmark",
    "Case",
    "GenerationConfig",
    "ScoreConfig",
    "Scorer",
    "generate",
    "load_benchmark",
    "mrank",
    "score_results",
]
