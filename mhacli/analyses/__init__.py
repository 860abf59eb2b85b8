"""The analyses over the engine:

per-head statistics and kinds, inspect's partial maps, the census, diff, explain, ablation and the loss, verify, and the
parallel execution of per-text work.

Each module shares its command's name where it has one. Nothing here prints or words a CLI flag.
"""
