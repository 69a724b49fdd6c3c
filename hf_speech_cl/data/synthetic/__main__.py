"""`python -m hf_speech_cl.data.synthetic`: build the offline corpora (see `cli.py`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
