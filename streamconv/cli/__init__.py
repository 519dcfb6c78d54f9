"""The command line: ``streamconv convert | inspect | validate | verify | export | plans``."""

from streamconv.cli.app import main

__all__ = ["main"]
