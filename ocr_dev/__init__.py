"""Development tools shared by the tests and the benchmarks; nothing here is imported by the service.

- ``stand_in_engine``: a STAND-IN for vLLM's OpenAI server (no model, only the timing of batched decoding);
- ``tiny_model``, ``tiny_vllm_model``: tiny random DeepSeek-OCR checkpoints, for transformers and for vLLM;
- ``servers``: starting and stopping the service's own scripts as users do;
- ``inputs``: synthetic images, PDFs and hostile files.
"""
