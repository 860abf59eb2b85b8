"""One module per command; each registers itself on mhacli.commands._app.app."""
