"""The vault: keys, the encrypted object format and the object store (facade by the lead)."""
