"""Tests of the ECF8 format: encoder, codebook, validation, checksums and decoding."""
