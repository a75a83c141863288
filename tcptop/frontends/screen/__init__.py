"""The screen: a Textual app over a snapshot source (app.py; its widgets are in tcptop/widgets/).

Nothing is imported here: the widgets import this package's data modules (store, columns,
units), and the app imports the widgets, so the package's face must not import the app.
"""
