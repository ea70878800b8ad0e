"""Text-generation backends behind one small interface (see base.py)."""
