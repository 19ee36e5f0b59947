"""Evaluation (method.md §5): benchmarks, generation, the five metrics, mRank and the trade-off curve.

Modules: `benchmarks` (DreamBench, DreamBench++, JSONL), `generate` (resumable, multi-process), `metrics` (pure
maths), `extractors` and `aesthetic` (the models behind the metrics), `score`, `rank` (mRank), `curve`. This
package imports nothing on its own, so `flexip eval --help` stays fast.
"""
