"""The screen: a Textual app over a snapshot source (its widgets are in tcptop/widgets/)."""

from tcptop.frontends.screen.app import run

__all__ = ["run"]
