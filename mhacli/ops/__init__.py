"""The API's operations: each request checked, guarded for memory and run, below both doors to the analyses.

mhacli.api's objects (Model, Run, diff, census) and the CLI's commands (mhacli/cli/) stand on these modules,
so a notebook and `mha` share one implementation, one memory guard and the same typed errors. One concern per
module: inputs (models, texts, ids), memory (the guard), heads (inspect/stats), explain, diff, ablation (ablate,
prune, --ablate), census, info, verify. Nothing here prints: what a person should read comes back to the caller.
"""
