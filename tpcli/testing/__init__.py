"""What tests use, tp's own and third parties': a local Hugging Face Hub (`hub_server`) and file
server (`file_server`) on 127.0.0.1, conversion helpers against real `transformers` models
(`convert`), and fault injection (`faults`). Never imported by tp at run time."""
