"""Evaluator: follows the published weight versions and scores a fixed held-out split every few
versions while RL runs (placement, per-reference similarity, background error by reference count),
exported to Prometheus as ``dyref_eval_score{metric, n_refs}`` and kept in Redis for the report."""
