"""Inference below every method: batched generation and option scoring on a model
(:mod:`.generation`), the generation actor that PPO, reflection, CultureSPA and evaluation all
use (:mod:`.rollout`, with its vLLM backend :mod:`.vllm_backend`), and running inference in
process or on a pool of those actors (:mod:`.pools`)."""
