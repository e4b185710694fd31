"""ALIGN (arXiv 2508.13426): LoRA SFT on word-association norms (:mod:`.sft`), then PPO with
the Spearman ranking reward (:mod:`.ppo`)."""
