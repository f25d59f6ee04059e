"""Model checkpoints: the tiny offline Qwen2.5-VL (`tiny`) and checks for any checkpoint directory (`checkpoint`)."""
