"""Evaluation of edits: CLIP metrics along a camera path, and the report a person looks at."""
