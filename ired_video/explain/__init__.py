"""Explanations: patch interactions, responsive fields, heatmaps and their faithfulness (issue 8)."""
