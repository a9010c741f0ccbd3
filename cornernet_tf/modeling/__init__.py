"""modeling stage."""
