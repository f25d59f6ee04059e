"""The structured multi-criteria safety reward: rubric, judges, penalties and the verl reward manager."""
