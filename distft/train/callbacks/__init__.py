"""Keras callbacks that make up a distft run, one concept a file."""
