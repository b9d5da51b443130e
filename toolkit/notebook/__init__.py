"""Notebook front: the guided-sync wizard, HTML displays and matplotlib plots."""
