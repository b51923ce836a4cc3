"""Agencies' native record formats (JSON Schemas) and their mappings to canonical messages."""
