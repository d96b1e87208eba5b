"""OmniRef-Bench: index-keyed loader, resumable generation, pluggable metrics, per-count report.

Modules: loader (metadata/train formats), runner (generation), metrics + judge_metric (scorers),
backends (scorers from config), scoring (resumable scoring), report (JSON/Markdown/PNG),
synthetic (offline benchmark), cli (``dyref bench``).
"""
