"""Ptychography: prepared data, the object/probe model, files and the run flow."""
