"""Evaluation: the engine (``engine/``), metric functions (``metrics``, ``rouge``), the benchmark
registry (``registry``, ``benchmarks/``) and the benchmarks (``tofu/``), each writing a result
envelope (``results``). docs/metrics.md describes them; nothing is imported here, so importing a
metric module stays cheap."""
