"""Worst-case strength: every recovery attack runs a grid of settings, the same for every model, and is judged at the
strongest setting that does not teach.

A setting is admissible when the retain-only twin's recovery under it is at most `admissible` (0.05 by default): the
twin never learnt the forget facts, so what it "recovers" the attack itself taught. Without a twin every setting
counts. A model's reported recovery is its largest over the admissible settings, named; the verdict reads the edited
model's largest gap over the twin at one admissible setting (the twin is the control at the same strength).
"""
from __future__ import annotations

ADMISSIBLE = 0.05


def judge(result: dict, admissible: float = ADMISSIBLE) -> dict:
    """`result` (an attack's: {"per_model": {model: {"by_setting": {setting: recovery}, ...}}}) with the settings,
    which are admissible, each model's worst-case recovery and setting, and the edited model's worst gap."""
    per = result["per_model"]
    labels = list(next(iter(per.values()))["by_setting"])
    twin = per["twin"]["by_setting"] if "twin" in per else None
    ok = [s for s in labels if twin is None or twin[s] <= admissible]
    for r in per.values():
        best = max(ok, key=lambda s: r["by_setting"][s]) if ok else None
        r["recovery"], r["setting"] = (r["by_setting"][best] if best else None), best
    worst = None
    if "edited" in per and ok:
        ref = twin or dict.fromkeys(labels, 0.0)
        edited = per["edited"]["by_setting"]
        s = max(ok, key=lambda s: edited[s] - ref[s])
        worst = {"setting": s, "edited": edited[s], "reference": ref[s], "gap": edited[s] - ref[s],
                 "against": "twin" if twin is not None else "ideal"}
    return {**result, "settings": labels, "admissible": [s in ok for s in labels], "admissible_at": admissible,
            "worst": worst}
