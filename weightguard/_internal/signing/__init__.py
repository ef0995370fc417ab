"""OMS bundle encoding/decoding and the parallel one-pass hashing of model files."""
