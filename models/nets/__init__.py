"""The networks: Hybrid Demucs, HT Demucs (and the layers they share), and the pass-through
test model. Nothing here reads files or knows about training."""
