"""Removable media: everything that touches a camera card.

Why a package of its own: a card is hostile input. Every read and write of a card file goes
through :mod:`core.media.safe_open`, so the rules (no links followed, nothing outside the card,
only regular files on the card's own device) live in one place; :mod:`core.media.scan` walks a
card with them and :mod:`core.media.filetypes` tells images from everything else by content.
"""
