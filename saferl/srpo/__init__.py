"""PST's second stage, Safety Reasoning Preference Optimization (SRPO): DPO on preference pairs of
reasoning trajectories, which keeps a warm-started policy safe without making it refuse benign requests.

`pairs` ranks and stores the pairs (PST's safety > utility > reasoning order over the project's judge),
`mining` makes them from a policy's own samples, `dpo` trains on them through TRL's `DPOTrainer`.
Run `python -m saferl.srpo pairs|train +exp=NAME`.
"""
