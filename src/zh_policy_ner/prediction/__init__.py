"""Batch prediction: pieces and resumable outputs (batch), the predict stage (predict), the Ray
Data engine (ray_engine), the CSV and HTML reports (reports) and the benchmarks (bench)."""
