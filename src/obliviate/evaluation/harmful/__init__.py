"""The harmful-prompt benchmark (SKU, issue #15): unwanted-answer rates through a judge, and
utility on normal prompts. ``suite.evaluate_harmful`` runs it; ``judge`` and ``utility`` hold
the definitions."""
