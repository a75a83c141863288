"""The screen: a Textual app over a snapshot source (its widgets are in tcptop/widgets/)."""
