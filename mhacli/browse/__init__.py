"""`mha browse`, the interactive terminal app (Textual, the `browse` extra).

`state` holds what is shown, read from the Python API only (mhacli.api); `app` is the Textual application; the panes are
drawn by mhacli.views.terminal.browse. Imported only by the browse command, when it runs.
"""
