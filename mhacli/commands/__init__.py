"""One module per command; each registers itself on mhacli.cli.app."""
