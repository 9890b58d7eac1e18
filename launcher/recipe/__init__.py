"""The built-in training recipe: a small GPT on generated data, trained with DDP, FSDP or
DeepSpeed.
"""
