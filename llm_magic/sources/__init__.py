"""What MODEL names, found out before any weights are read: resolving it, the local Hugging
Face cache, the converted .gguf copies, what this machine can load, the size a model will
take, and the facts a failed load is explained with.

Every module here imports torch and transformers lazily, inside the functions that need
them, and nothing above it (no engine, no api, no magics).
"""
