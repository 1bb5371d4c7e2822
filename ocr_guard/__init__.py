"""The model authors' repetition guard, as code that runs inside vLLM's own processes.

Nothing here imports the service: an engine host, the engine image and a user's own vLLM load it with only vLLM (and
its torch and numpy) installed. ``ocr_guard.vllm_v2:NoRepeatNGramGuard`` is the processor for vLLM's Model Runner V2.
"""
