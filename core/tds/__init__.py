"""Elastic constants from thermal diffuse scattering: model, input files, harvest, fit."""
