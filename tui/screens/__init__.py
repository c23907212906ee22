"""The kiosk's screens: one module per step of the session, plus dialogs."""
