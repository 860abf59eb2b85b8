"""Views: what a result looks like.

The terminal (terminal/, rich), plain text, the machine formats (json, jsonl, csv, tsv, npz), figures (matplotlib), the
offline HTML page and its assets (web/), and `--save`.
"""
