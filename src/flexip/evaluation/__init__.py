"""Evaluation (docs/method.md §5): benchmarks, generation, the five metrics, mRank and the trade-off curve.

Modules: `benchmarks` (DreamBench, DreamBench++, JSONL), `generate` (resumable, multi-process), `metrics` (pure
maths), `extractors` and `aesthetic` (the models behind the metrics; `tiny_backbones`, tiny random ones for the
offline kit), `score`, `rank` (mRank), `curve`. This package imports nothing on its own, so `flexip eval --help`
stays fast.
"""
