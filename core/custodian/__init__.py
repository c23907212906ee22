"""Custodian work over an unlocked vault: search, export for referral, consent withdrawal,
backup and restore.

Why a package of its own: everything here needs the vault *private* key (except backup and
restore, which copy ciphertext), so none of it may run on the kiosk's ingest path, and the
shells (CLI, custodian screens) must reach it the same way: :func:`access.unlock` first.
"""
