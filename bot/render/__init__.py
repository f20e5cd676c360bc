"""Rendering of billing summaries: plain text (CLI, shell) and Block Kit (Slack)."""
