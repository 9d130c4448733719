"""Typer command functions, registered on the `appliance` app in `appliance/cli.py`."""
