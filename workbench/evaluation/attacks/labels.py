"""How the three models are named and coloured in every attack's figures and tables."""
from __future__ import annotations

LABELS = {"original": "original", "edited": "edited", "twin": "retain-only twin"}
COLORS = {"original": "#1f77b4", "edited": "#d62728", "twin": "#2ca02c"}
