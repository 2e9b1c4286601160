"""align: RL alignment and preference optimization on Ray, vLLM, DeepSpeed and LoRA."""

__version__ = "0.1.0"
