"""The stored form of a call and its keys: age, call files (WAV/FLAC/Ogg Opus), recovery after a
power cut, the records key and its sealing, key epochs, retention and crypto-erase, sealed
personal fields. Used by ``recording/`` (writing) and ``release/`` (reading); never imports them
nor ``people/``."""
