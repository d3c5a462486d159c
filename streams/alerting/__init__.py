"""Counting, spike detection, alert lifecycle and delivery."""
