"""The recording path: audio device -> capture reader -> line rings -> segmenter -> writer, and the
notice. Writes calls through ``vault/`` (public recipients only); never imports ``release/``."""
