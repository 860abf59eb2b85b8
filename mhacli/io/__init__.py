"""What comes in from outside:

resolving `-m MODEL`, the hub, the safetensors reader and the checkpoint, the tokenizer, text input and file names.

Every byte read here is treated as hostile. Reading a checkpoint applies its family's key layout, so this layer
stands on the engine's families (engine/arch/), never the other way round.
"""
