"""The shipped models (installed as the package data ``edge_app.models``)."""
