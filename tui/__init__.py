"""The kiosk: a keyboard-driven Textual app over ``core.session``. It holds no business logic."""
