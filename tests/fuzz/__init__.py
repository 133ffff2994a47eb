"""The fuzzers (docs/hardening.md): hparams (hyperparameter mutation through real CLI runs),
bytes (byte mutation of every GGUF kind), inputs (atheris on the exchange reader, audio loading
and the server's request parsing).  `PYTHONPATH=src:tests python -m fuzz --help`."""
