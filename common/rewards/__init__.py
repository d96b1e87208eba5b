"""Reward scorers: each returns RAW values for a batch and knows nothing of training.

Modules: embedding (SigLIP/SigLIP2, CLIP, DINOv2 features), similarity (per-target cosine),
style (style-embedding cosine), lighting (LAB statistics, OmniRef-Bench), judge (VLM rubric scores),
colour (a learnable toy reward), registry (`build_scorer` from `RewardsConfig`).
Import the submodule you need; this package imports nothing heavy.
"""
