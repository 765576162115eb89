"""Offline tiny models: random-weight but real VLMs and OpenVLA checkpoints, built in seconds without a network.

For the tests, demo runs, the CPU benchmarks and the pipeline's ``model.tiny_arch``. No production loading
path imports this package (``tests/test_architecture.py`` keeps ``policies`` from importing it):

- ``tiny_vlms.py``: the Hugging Face architectures (PaliGemma 1/2, Qwen2.5-VL, SmolVLM, LLaVA) from their
  config classes with an in-process trained tokenizer, one table entry per architecture; plus
  ``write_action_tokenizer`` to make a saved one a complete VLA;
- ``tiny_openvla.py``: an OpenVLA checkpoint in the released file layout;
- ``bin_rows.py``: the smooth action-bin embedding rows both give their bin tokens.
"""
