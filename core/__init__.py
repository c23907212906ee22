"""clinivault core: the domain, free of any user interface.

Nothing in this package imports Textual or ``tui``; the TUI and the CLI are thin shells over it.
"""
