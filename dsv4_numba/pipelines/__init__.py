"""Fused pipelines (indexer, fmha): staged compositions and fused production kernels."""
