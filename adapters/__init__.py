"""Adapters: the folder format and every operation on adapter files.

A domain library: it imports only `contracts` and third-party libraries (torch, safetensors; never api,
worker, serving or db). The API checks imported archives with it (`files`, `archive`: no torch at import
time), workers run adapter operations with it, the engine and the trainer read and write the format.

* `files`       the adapter folder format (PEFT's `adapter_config.json` + `adapter_model.safetensors`, plus
                ftaas' compressed weights): its file names, header-only shape checks, tensor reading
* `archive`     uploaded adapter archives unpacked safely (path tricks, links, pickles, bombs refused)
* `compeft`     ComPEFT's stored form of compressed tensors (torch)
* `merge`       merge algebra on LoRA factors: linear soups, TIES, DARE, SVD re-factorisation, LiNeS
* `lora_files`  LoRA adapters read, merged and written as files
* `compress`    ComPEFT compression of an adapter folder
* `export`      a merged dense model that plain `transformers` loads
"""
