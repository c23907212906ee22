"""Widgets the kiosk's screens share: the review grid, half-block images, toggles."""
