"""Helpers for the tests and the benchmark (imported as `support.<module>` with tests/ on
sys.path; conftest.py builds its fixtures from them, and no module imports conftest):

- `tiny_model`: the tiny offline GPT-2 and Llama .gguf, Hub-cache layouts, folder copies
- `loopback`: Hub endpoints on 127.0.0.1 (refusing, silent, answering with Hub errors)
- `hub_server`: a loopback Hub file endpoint, so huggingface_hub writes a real cache
- `servers`: real OpenAI-compatible servers as subprocesses on 127.0.0.1
- `network_guard` (+ `network_guard_site/`): refuses traffic to any other machine
- `mutate_repetition_penalty`: a held-out mutation, as a pytest plugin (`-p`)
"""
