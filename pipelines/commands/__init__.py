"""Subcommands whose option handling is too long for cli.py."""
