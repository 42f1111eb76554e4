"""SM1: a Mamba1 language model with d_state=1 for real-time MIDI generation, in pure PyTorch."""
